"""The experiment report: our numbers beside the papers', their uncertainty, figures, and how they were made.

:func:`build_report` takes the experiment matrix that the pipeline trained and evaluated (one
dictionary per experiment, :func:`evaluation.evaluate.evaluate_trainer_dir`'s summary inside)
and writes into one folder::

    report.md        first what the run compared and found (one line per patient-level, Holm-corrected
                     comparison), then the tables of the rows that ran (MIDL Table 1, EMBC
                     fine-tuning, plain nnU-Net, bootstrap intervals), the paired tests, figures,
                     provenance and definitions
    report.html      the same document, one self-contained file: figures inlined as base64 data
                     URIs, no scripts, no external assets, so it opens from disk (or an e-mail)
    figures/*.png    the figures report.md links to (relative paths)
    summary.json     every number: per experiment status, requested and used budget, aggregate and
                     per-fold metrics, intervals; the paired tests; the papers' numbers; the cells
    summary.csv      one row per experiment x metric, with the papers' numbers beside ours

Every file is written atomically (:mod:`nnunet_joint.io`). The rooms:

* :mod:`.experiments`: an experiment = the pipeline's entry + what its trainer folder recorded
  (``joint_config.json``, ``learning_curve.json``, ``dataset.json`` patients, ``plans.json``);
* :mod:`.evidence`: bootstrap intervals per experiment and the papers' paired comparisons
  (computed by :mod:`evaluation.statistics`);
* :mod:`.tables`: the tables as text cells;
* :mod:`.figure_set` and :mod:`.overlays`: which data each figure shows (drawn by
  :mod:`evaluation.figures`), and the overlay grid's NIfTI reading;
* :mod:`.document`: one document model rendered to Markdown and to HTML;
* :mod:`.outputs`: ``summary.json`` and ``summary.csv``;
* :mod:`.build`: :func:`build_report`, which puts them together.
"""

from nnunet_joint.evaluation.report.build import build_report
from nnunet_joint.evaluation.report.experiments import Experiment
__all__ = ["Experiment", "build_report"]
