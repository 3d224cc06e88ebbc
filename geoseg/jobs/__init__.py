"""Jobs: many scenes from one file (batch, resumable), recipes (chip -> train -> predict ->
evaluate), map job files; :mod:`geoseg.jobs.run` tells them apart."""
