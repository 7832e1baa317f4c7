"""What ``pytc --help`` and ``pytc run --help`` say beyond the flags: the job format, examples,
exit codes. Plain text, laid out as printed (the parsers use ``RawDescriptionHelpFormatter``)."""

from __future__ import annotations

EXIT_CODES = """\
exit codes:
  0    succeeded
  1    the job failed (the message says where)
  2    the job or the command line is invalid: the message names the field and why; nothing was
       written
  130  interrupted (Ctrl-C, SIGINT, SIGTERM) or cancelled; what is done is kept, run the same job
       again to resume"""

PYTC_EPILOG = f"""\
Start with `pytc run --help`: what a job document holds, a minimal example, resuming.

{EXIT_CODES}
"""

# The job below is checked by tests/unit/service/test_cli_help.py: it must stay a valid document.
MINIMAL_JOB = """\
kind: inference
input: {path: em.zarr, dataset: raw}
model: {torchscript: net.pt}
window: {patch_size: [17, 129, 129], overlap: 0.5}
output: {path: pred.zarr, dataset: pred}"""

RUN_DESCRIPTION = """\
Run one job (inference or training) to its end, without a server: the job is checked first
(nothing starts when it is invalid), then run on an embedded local Dask cluster or on the
scheduler named by --scheduler or $PYTC_SCHEDULER, with a progress line on stderr. With the one
embedded worker (--workers 1, the default) a segmentation job's steps and every pyramid stage run
without starting Dask, --threads at once (default the cores this process may use): a segmentation
job's in processes forked from this one (on Linux), else on threads of this process. The output's
path is printed on stdout at the end."""


def _indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


RUN_EPILOG = f"""\
the job document (YAML or JSON) says its kind:
  kind: inference   a model's predictions over a volume: input, model, window, output, compute
                    (README.md, "Running a job")
  kind: training    a model trained on an image and its labels: data, model, targets, solver,
                    sampling, checkpoint (docs/training.md)
  kind: evaluation  a segmentation scored against its ground truth: segmentation, ground_truth,
                    metrics, compute (docs/evaluation.md; also `pytc evaluate`)
  kind: pytc_config a PyTorch Connectomics v1 experiment (base, experiment, overrides,
                    inference, checkpoint), run as the job it converts to (docs/pytc.md)
  A document without `kind` is an inference job. Every field with its type and default is in the
  service's OpenAPI description (JobDocument, GET /openapi.json of pytc-serve).

a minimal inference job (job.yaml):
{_indented(MINIMAL_JOB)}

examples:
  pytc synth em.zarr --shape 64 256 256          a synthetic EM-like volume to try it on
  pytc run job.yaml                              on an embedded local Dask cluster
  pytc run job.yaml --scheduler tcp://HOST:8786  on a running cluster (or PYTC_SCHEDULER=...)
  pytc run job.yaml --data-root /data --data-root /scratch
  pytc run --pytc-config Base.yaml Exp.yaml INFERENCE.OUTPUT_PATH out/ --inference --checkpoint C
                                                 a PyTorch Connectomics v1 experiment, as PyTC runs it

data roots: every path of the job (input, output, model, checkpoint) must resolve, symlinks
  followed, inside a data root: --data-root DIR (repeatable), else $PYTC_DATA_ROOTS
  (`:`-separated), else the current directory. Relative paths resolve against the first.

resume and overwrite: running the same inference job again resumes it: finished blocks are kept
  and the rest is computed (Ctrl-C loses at most the blocks in flight). window.batch_size and
  compute.device may change between the runs; any other change makes another job. An output that
  exists and was not made by this same job is refused (exit 2) unless `output.overwrite: true`.
  A training job run again continues from its newest checkpoint in checkpoint.dir.

{EXIT_CODES}
"""
