"""Evaluation: AUC with DeLong statistics, classification metrics and the comparison report.

    components.py      input checks and DeLong's structural components (mid-ranks)
    roc.py             AUC, DeLong variance / CI, the paired DeLong test, the ROC curve (pROC
                       rules); with patients=, the patient-level methods of clustered.py
    clustered.py       several images per patient: Obuchowski (1997) and a patient-level bootstrap
    classification.py  binary and multi-class metrics (metrics.json), predictions.csv read / write
    report.py          write_report: recomputes and compares fine-tuning runs or a sweep
    report_summary.py  its summaries: per init, Holm-corrected wins, per-application bootstrap gain,
                       warnings (chance level, collapsed models, no init beating chance)
    report_markdown.py report.md
    report_plots.py    the report's figures, PNG + PDF (matplotlib, Agg; imported only when drawing)
    paired.py          paired statistics of per-image scores (Dice): t-test, Wilcoxon, Shapiro
                       (per patient means first when patients are given)
    audit.py           `radimagenet-jax audit`: the RadImageNet-minus-ImageNet gain under two protocols
    command.py         the `evaluate` command: a workdir's checkpoint on a split (uses the engine)

Everything but `command` is pure numpy / scipy / matplotlib and needs no JAX.
"""
from __future__ import annotations

from radimagenet_jax.evaluate.classification import (Predictions, binary_metrics,
                                                     classification_metrics, multiclass_metrics,
                                                     read_predictions, write_predictions,
                                                     youden_threshold)
from radimagenet_jax.evaluate.paired import paired_comparison
from radimagenet_jax.evaluate.report import write_report
from radimagenet_jax.evaluate.report_summary import run_warnings
from radimagenet_jax.evaluate.roc import (delong_ci, delong_test, roc_auc, roc_curve,
                                          structural_components)

__all__ = ["Predictions", "binary_metrics", "classification_metrics", "delong_ci", "delong_test",
           "multiclass_metrics", "paired_comparison", "read_predictions", "roc_auc", "roc_curve",
           "run_warnings", "structural_components", "write_predictions", "write_report",
           "youden_threshold"]
