"""Segmentation metrics out of core: contingency tables per block, merged by summation, scored.

:mod:`~volumes.metrics.table` (the table, exact and additive), :mod:`~volumes.metrics.scores`
(adapted Rand as SNEMI3D and scikit-image define it, VOI split/merge, foreground IoU, MitoEM's
instance AP, all from a table), :mod:`~volumes.metrics.ap` (MitoEM's AP, precisely),
:mod:`~volumes.metrics.blockwise` (two volumes, block by block) and
:mod:`~volumes.metrics.reference` (the same metrics in memory, the published scripts' way).
numpy and SciPy only; docs/evaluation.md says what each figure means.
"""

from volumes.metrics.blockwise import LabelError, evaluate_volumes
from volumes.metrics.scores import METRICS, Metric, Scores, parse_metrics, score_table
from volumes.metrics.table import ContingencyTable, TableMerger, merge_tables, table_of

__all__ = [
    "METRICS",
    "ContingencyTable",
    "LabelError",
    "Metric",
    "Scores",
    "TableMerger",
    "evaluate_volumes",
    "merge_tables",
    "parse_metrics",
    "score_table",
    "table_of",
]
