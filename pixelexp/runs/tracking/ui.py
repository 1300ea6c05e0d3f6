"""How an experiment opens in MLflow's UI: its description, the model-training view, and
a saved view of the charts that compare its runs by epoch and by hour.

MLflow 3's UI opens a new experiment on its GenAI overview and shows a parent run's
children folded under it, so a chart of a study shows nothing until the parent is
unfolded. The saved view pixelexp writes (an experiment tag `mlflow.sharedViewState.<key>`,
the form MLflow's own "Save as new view" writes) groups the runs by the tag
`pixelexp.label` (the variant's or trial's name), which shows every child at once and
leaves the parent, which logs no curves, folded in the group "Additional runs" and out
of the charts; the charts draw each run (not a group's mean), so the sample grids show
too. Its charts:

    bits/dim by epoch    val_bpd, train_bpd against the step (the epoch; 0 = untrained)
    bits/dim by hour     the same against elapsed_hours (training and evaluation time)
    samples              the sample grid of each run, with a slider over its epochs
    settings             the params and final metrics in which the runs differ

`view_url` is the address that opens it: the runs page in chart mode, in the
model-training workflow.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from urllib.parse import urlencode

GROUP_TAG = "pixelexp.label"  # each child run's name (variant or trial): the view's groups
VIEW_KEY = "pixelexp"
VIEW_NAME = "pixelexp: bits/dim by epoch and hour"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
DESCRIPTION_TAG = "mlflow.note.content"
KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # MLflow's kind for "Model training" experiments

# section: (title, cards per row, card height in pixels); the grids and the settings table
# take a whole row, where MLflow's default (three per row) cuts them off
_SECTIONS = {"epoch": ("bits/dim by epoch", 2, 360), "hour": ("bits/dim by hour", 2, 360),
             "samples": ("samples", 1, 760), "settings": ("settings", 1, 640)}


def _line(metric: str, section: str, by_hour: bool) -> dict:
    return {"uuid": f"pixelexp-{section}-{metric}", "type": "LINE", "metricSectionId": f"pixelexp-{section}",
            "displayName": f"{metric} by {'hour' if by_hour else 'epoch'}", "metricKey": metric,
            "runsCountToCompare": 100, "deleted": False, "isGenerated": False,
            "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear", "range": {},
            "xAxisKey": "metric" if by_hour else "step",
            "selectedXAxisMetricKey": "elapsed_hours" if by_hour else "",
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
            "useGlobalXaxisKey": False, "useGlobalLineSmoothing": True}


def _card(kind: str, section: str, **fields) -> dict:
    return {"uuid": f"pixelexp-{section}-{kind.lower()}", "type": kind, "metricSectionId": f"pixelexp-{section}",
            "runsCountToCompare": 100, "deleted": False, "isGenerated": False, **fields}


def view_state(last_epoch: int = 1) -> dict:
    """The saved view's state, in the fields of MLflow 3's runs page; the sample grids
    open on `last_epoch`."""
    charts = [_line(m, "epoch", False) for m in ("val_bpd", "train_bpd")]
    charts += [_line(m, "hour", True) for m in ("val_bpd", "train_bpd")]
    charts.append(_card("IMAGE", "samples", displayName="samples", imageKeys=["samples"], step=last_epoch,
                        showRunParams=False))
    charts.append(_card("DIFFERENCE", "settings", chartName="settings of the runs", displayName="settings",
                        compareGroups=["Parameters", "Model metrics"], showChangeFromBaseline=False,
                        showDifferencesOnly=True, baselineColumnUuid=""))
    sections = [{"uuid": f"pixelexp-{k}", "name": name, "display": True, "isReordered": False,
                 "deleted": False, "isGenerated": False, "columns": columns, "cardHeight": height}
                for k, (name, columns, height) in _SECTIONS.items()]
    return {
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": True, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": ["metrics.`best_val_bpd`", "metrics.`best_test_bpd`", "params.`model.name`",
                            "metrics.`elapsed_hours`"],
        "columnOrder": [], "columnWidths": {}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts, "compareRunSections": sections,
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False,
        "useGroupedValuesInCharts": False, "hideEmptyCharts": True,  # a curve per run, not per group
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": GROUP_TAG}]},
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def view_tag_value(last_epoch: int = 1, now_ms: int | None = None) -> str:
    """The tag's value: name, times, and the state deflated and base64-encoded as the UI stores it."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    state = "deflate;" + base64.b64encode(zlib.compress(json.dumps(view_state(last_epoch)).encode())).decode()
    return json.dumps({"name": VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": state})


def read_view(value: str) -> dict:
    """The state of a saved view's tag value (the inverse of view_tag_value)."""
    state = json.loads(value)["state"]
    return json.loads(zlib.decompress(base64.b64decode(state.split(";", 1)[1])))


def experiment_tags(description: str, last_epoch: int = 1) -> dict[str, str]:
    """Tags that make an experiment open on its runs, described, with pixelexp's view."""
    tags = {KIND_TAG: MODEL_TRAINING, VIEW_TAG: view_tag_value(last_epoch)}
    if description:
        tags[DESCRIPTION_TAG] = description
    return tags


def view_url(base: str, experiment_id: str) -> str:
    """The address of an experiment's runs in pixelexp's chart view, on the UI at `base`."""
    query = urlencode({"viewStateShareKey": VIEW_KEY, "compareRunsMode": "CHART",
                       "workflowType": "machine_learning"})
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"
