"""Running a job of scenes: several at once on one Dask client, their tasks drawing on one
in-flight budget; each scene predicted, described and recorded, or reported as failed."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from geoseg.errors import GeosegError, first_line
from geoseg.fs import write_json_atomic
from geoseg.jobs.batch.job import RECORD_SUFFIX, Job, outputs_for, record_path
from geoseg.jobs.batch.load import load_job
from geoseg.jobs.batch.records import expected_record, is_done, remove_stale_parts
from geoseg.jobs.batch.stac import scene_time, stac_item
from geoseg.jobs.lock import job_lock
from geoseg.jobs.report import BatchReport, SceneOutcome


def run_scene_job(
    job_path: str | os.PathLike[str],
    doc: Any,
    force: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    client: Any = None,
    echo: Callable[[str], Any] = lambda s: None,
    overwrite: bool = False,
    verbose: bool = False,
    progress: bool = False,
    started: float | None = None,
) -> BatchReport:
    """Run a job of scenes (``doc``: its parsed YAML) and return its report; the options are
    :func:`geoseg.jobs.run.run_batch`'s, ``started`` the job's ``perf_counter`` start."""
    t0 = time.perf_counter() if started is None else started
    job = load_job(job_path, doc)
    from geoseg.models.load import read_model_config
    from geoseg.progress import JobProgress

    report_file = Path(report_path) if report_path else job.folder / "batch-report.json"
    _check_report_path(job, report_file, overwrite)
    from geoseg.results.report import check_report_page, write_report
    from geoseg.results.report import report_path as html_path

    check_report_page(html_path(report_file), str(job.path), overwrite)
    model = read_model_config(job.model)
    if job.remote is not None:
        from geoseg.jobs.batch.store import prepare

        job.remote_names = prepare(job.remote, job.folder, RECORD_SUFFIX)
    bar = JobProgress(len(job.scenes), quiet=not progress)
    say: Callable[[str], Any] = (
        (lambda s: None) if not verbose else (bar.message if progress else echo)
    )
    with job_lock(job.folder, job.path):
        from geoseg.dask.session import inference_session

        with inference_session(client, job.scheduler, job.workers, verbose) as session:
            outcomes = _run_scenes(job, model, force, session, bar, say)
    bar.close()
    report = BatchReport(str(job.path), outcomes, time.perf_counter() - t0)
    write_json_atomic(report_file, report.as_dict())
    write_report(report.as_dict(), job.folder, html_path(report_file))
    if job.remote is not None:
        from geoseg.jobs.batch.store import push

        push(job.remote, job.folder, [report_file, html_path(report_file)])
    return report


def scenes_at_once(concurrency: int | str, threads: int) -> tuple[int, bool]:
    """How many scenes may be in flight, and whether more start only when the running ones run
    out of tasks to submit (``auto``: enough scenes to fill every slot, plus scenes finishing)."""
    if concurrency == "auto":
        return 3 * max(1, threads) + 1, True
    return max(1, int(concurrency)), False


def _run_scenes(
    job: Job, model: Any, force: bool, session: Any, bar: Any, say: Callable[[str], Any]
) -> list[SceneOutcome]:
    """Every scene of the job, several at once in client threads, their tile and polygon tasks
    sharing one in-flight budget of 2 tasks per worker thread; outcomes in job order.

    Ctrl-C (KeyboardInterrupt here) cancels the budget: every scene in flight stops, aborts its
    temporary files and leaves nothing at its output paths; then the interrupt propagates.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from geoseg.dask.stream import TaskSlots

    slots = TaskSlots(2 * session.threads)
    cap, auto = scenes_at_once(job.concurrency, session.threads)
    opening = [0]  # scenes admitted but not yet streaming tasks (their demand is unknown)
    lock = threading.Lock()
    outcomes: dict[int, SceneOutcome] = {}
    running: dict[Future[SceneOutcome], int] = {}
    queue = list(enumerate(job.scenes))[::-1]

    def hungry() -> bool:
        """Whether the running scenes already have enough tasks waiting to fill the budget."""
        with lock:
            return opening[0] > 0 or slots.demand >= slots.size

    def opened() -> None:
        with lock:
            opening[0] -= 1

    pool = ThreadPoolExecutor(max_workers=cap, thread_name_prefix="geoseg-scene")
    try:
        while queue or running:
            while queue and len(running) < cap and not (auto and running and hungry()):
                i, scene = queue.pop()
                if not force and is_done(job, scene, model.sha256):
                    say(f"skip  {scene} (outputs match their record)")
                    outcomes[i] = SceneOutcome(scene, "skipped")
                    bar.finished("skipped")
                    continue
                with lock:
                    opening[0] += 1
                bar.started()
                running[
                    pool.submit(_one_scene, job, scene, model, session, slots, bar, say, opened)
                ] = i
            if running:
                finished, _ = wait(list(running), timeout=0.1, return_when=FIRST_COMPLETED)
                for fut in finished:
                    outcome = fut.result()
                    outcomes[running.pop(fut)] = outcome
                    bar.finished(outcome.status)
    except BaseException:
        slots.cancel()
        wait(list(running))
        raise
    finally:
        pool.shutdown(wait=True)
    return [outcomes[i] for i in sorted(outcomes)]


def _check_report_path(job: Job, report: Path, overwrite: bool) -> None:
    """Refuse a report path that holds something other than this job's last report (unless
    ``overwrite``), or that is a scene, the model or a scene's output."""
    from geoseg.fs import check_distinct_paths, check_output_path

    previous_report = False
    if report.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            previous_report = json.loads(report.read_text()).get("job") == str(job.path)
    if not previous_report:
        if not report.parent.exists() and report.parent == job.folder:
            return  # the output folder is created by the run
        check_output_path(report, overwrite, "batch report")
    outputs: dict[str, Any] = {"batch report": report}
    inputs: dict[str, Any] = {"job file": job.path, "model file": job.model}
    for i, scene in enumerate(job.scenes):
        inputs[f"scene {scene}"] = scene
        for kind, out in outputs_for(job, scene).items():
            inputs[f"{kind} output of {Path(scene).name}"] = out
    check_distinct_paths(inputs, outputs)


def _one_scene(
    job: Job,
    scene: str,
    model: Any,
    session: Any,
    slots: Any,
    bar: Any,
    say: Callable[[str], Any],
    opened: Callable[[], None],
) -> SceneOutcome:
    """Predict, describe and record one scene (in a client thread, beside other scenes);
    ``opened`` is called once the scene's tasks are known (or it failed before that)."""
    from geoseg.prediction import execute
    from geoseg.prediction.destinations import skipped_report_path
    from geoseg.prediction.plan import plan_predict

    t = time.perf_counter()
    try:
        outs = outputs_for(job, scene)
        remove_stale_parts(outs)
        rec = record_path(outs["classes"])
        with contextlib.suppress(FileNotFoundError):
            rec.unlink()  # the outputs are about to change: they no longer match any record
        say(f"start {scene}")
        vector_opts = None
        if job.vector is not None:
            vector_opts = {k: v for k, v in job.vector.items() if k != "format"}
            # the scene's own time, so a rerun writes byte-identical GeoPackages
            vector_opts["timestamp"] = scene_time(scene)
            if "skip_class" in vector_opts:
                vector_opts["skip_classes"] = tuple(vector_opts.pop("skip_class"))
        try:
            # with cells, the scene's output is the folder its mosaics are in
            target = outs["classes"].parent if job.predict_options.cells else outs["classes"]
            plan = plan_predict(
                scene,
                target,
                model,
                job.predict_options,
                outs.get("probabilities"),
                outs.get("vector"),
                overwrite=True,
                vector_options=vector_opts,
                confidence=outs.get("confidence"),
            )
            progress = bar.scene(plan.scene.pixels)
        finally:
            opened()
        result = execute(
            plan,
            session,
            progress,
            max_in_flight=slots,
            overwrite=True,
            vector_options=vector_opts,
            started=t,
        )
        if slots.cancelled:
            raise KeyboardInterrupt("the job was interrupted")
        from geoseg.results.scene import add_class_counts, json_areas, scene_results

        areas = scene_results(outs, job.stats, session.client, slots)
        write_json_atomic(
            outs["stac"],
            add_class_counts(
                stac_item(scene, outs, model.name, model.sha256, model.classes, result.stac_item),
                areas,
                outs.get("quicklook"),
            ),
        )
        record = expected_record(job, scene, model.sha256)
        record["outputs"] = {k: p.name for k, p in outs.items()}
        if result.skipped:
            record["partial"] = {
                "skipped_windows": len(result.skipped),
                "report": skipped_report_path(outs["classes"]).name,
            }
        write_json_atomic(rec, record)
        if (
            job.remote is not None
        ):  # outputs first, the record last: a record there means all is there
            from geoseg.jobs.batch.store import push

            skipped_file = skipped_report_path(outs["classes"])
            files = [p.parent if p.parent != job.folder else p for p in outs.values()]
            files += [skipped_file] if skipped_file.exists() else []
            push(job.remote, job.folder, [*dict.fromkeys(files), rec], keep=(rec,))
    except GeosegError as exc:
        say(f"FAIL  {scene}: {first_line(exc)}")
        return SceneOutcome(scene, "failed", first_line(exc), 0.0, time.perf_counter() - t)
    except Exception as exc:  # one bad scene must not stop the others
        msg = f"{type(exc).__name__}: {first_line(str(exc))}"
        say(f"FAIL  {scene}: {msg}")
        return SceneOutcome(scene, "failed", msg, 0.0, time.perf_counter() - t)
    note: str | None = None
    if result.skipped:
        note = (
            f"{len(result.skipped)} window(s) written as nodata (listed in "
            f"{skipped_report_path(outs['classes']).name}); the next run redoes this scene"
        )
        say(f"PART  {scene}: {note}")
    else:
        say(f"done  {scene} ({result.pixels / 1e6:.2f} MP in {result.seconds:.1f} s)")
    return SceneOutcome(
        scene,
        "partial" if result.skipped else "done",
        note,
        result.pixels / 1e6,
        time.perf_counter() - t,
        [p.name for p in outs.values()],
        json_areas(areas),
        len(result.skipped),
    )
