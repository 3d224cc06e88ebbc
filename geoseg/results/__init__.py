"""What a run's class rasters say: class areas by zone (:mod:`.stats`), change between two dates
(:mod:`.change`), quicklook PNGs (:mod:`.quicklook`) and a job's HTML report (:mod:`.report`)."""
