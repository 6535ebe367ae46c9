"""Airflow plugin: MLflow extra links on tasks and the optimisation-runs page in the Airflow UI."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from tasks.runs import REPORTS
from tasks.runs import PublishedRun as RunEntry

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey
    from fastapi import FastAPI
    from fastapi.responses import Response

log = logging.getLogger(__name__)

PLUGIN_NAME = "tfopt"
URL_PREFIX = "/tfopt"
UI_ROUTE = "tfopt"
DAG_ID = os.environ.get("TFOPT_DAG_ID", "optimize_model")
UI_DIR = Path(__file__).resolve().parent / "tfopt_ui"
RUNS_LIMIT = 20
RESULTS = "results.json"
REPORT_FILES = {
    "report.html": "text/html; charset=utf-8",
    "report.md": "text/plain; charset=utf-8",
    RESULTS: "application/json",
    "latency.png": "image/png",
    "accuracy_vs_latency.png": "image/png",
}
PLOTS = (
    ("latency.png", "Latency per call at batch 1 (box: p25–p75, whiskers: p1–p99)"),
    ("accuracy_vs_latency.png", "The task metric vs p50 latency at batch 1, with the gate"),
)
# The report page is produced by the pipeline; serve it as an isolated, script-less document.
REPORT_HTML_CSP = (
    "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "font-src data:; frame-ancestors 'self'"
)


# --- URLs -------------------------------------------------------------------------------------


def airflow_root_path() -> str:
    """The path the Airflow API server is served under ("/" unless [api] base_url has a path)."""
    path = urlsplit(conf.get("api", "base_url", fallback="") or "/").path or "/"
    return path if path.endswith("/") else f"{path}/"


def page_url(model: str | None = None, run_id: str | None = None) -> str:
    """Absolute path of the plugin page (the runs list, or one run's report)."""
    url = f"{airflow_root_path().rstrip('/')}{URL_PREFIX}/"
    if model and run_id:
        url += f"runs/{quote(model, safe='')}/{quote(run_id, safe='')}/"
    return url


def ui_url(path: str) -> str:
    """The Airflow UI address showing `path` of this plugin framed in its nav view."""
    return f"{airflow_root_path()}plugin/{UI_ROUTE}{path}"


def public_url(url: Any) -> str:
    """An http(s) URL users can click, with the MLflow address rewritten; "" when not usable.

    `TFOPT_MLFLOW_UI_URL` replaces the `MLFLOW_TRACKING_URI` base when the pipeline recorded
    an address only reachable from the workers (e.g. a service name inside the cluster).
    """
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        return ""
    override = os.environ.get("TFOPT_MLFLOW_UI_URL", "").rstrip("/")
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "").rstrip("/")
    if override and tracking.startswith(("http://", "https://")) and url.startswith(tracking):
        return override + url[len(tracking) :]
    return url


def find_field(value: Any, name: str) -> Any:
    """`name` from a task's result dict: top level, else in its `uris` / `metrics` parts."""
    if not isinstance(value, dict):
        return None
    if name in value:
        return value[name]
    for part in ("uris", "metrics", "registration"):
        if isinstance(value.get(part), dict) and name in value[part]:
            return value[part][name]
    return None


# --- operator extra links -----------------------------------------------------------------------


def _task_return_value(ti_key: TaskInstanceKey) -> Any:
    """The task instance's `return_value` XCom, read from the metadata DB (API server side)."""
    from airflow.models.xcom import XCOM_RETURN_KEY, XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key=XCOM_RETURN_KEY,
                run_id=ti_key.run_id,
                dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index,
                limit=1,
            ).with_only_columns(XComModel.value)
        ).first()
    return XComModel.deserialize_value(row) if row is not None else None


class _ResultFieldLink(BaseOperatorLink):
    """A link whose URL is one field of the task's returned result; "" (hidden) without it."""

    name: ClassVar[str]
    result_field: ClassVar[str]

    def url_from_result(self, value: Any) -> str:
        return public_url(find_field(value, self.result_field))

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        try:
            value = _task_return_value(ti_key)
        except Exception:
            log.warning("%s: cannot read the XCom of %s", self.name, ti_key, exc_info=True)
            return ""
        return self.url_from_result(value)


class MlflowRunLink(_ResultFieldLink):
    """The MLflow run a task logged to (`mlflow_run_url` in its result)."""

    name = "MLflow run"
    result_field = "mlflow_run_url"


class ModelVersionLink(_ResultFieldLink):
    """The registered model version (`model_version_url` in the `register` task's result)."""

    name = "Model version"
    result_field = "model_version_url"


class OptimisationReportLink(_ResultFieldLink):
    """This plugin's page for the run, inside the Airflow UI (from the `report` task's result)."""

    name = "Optimisation report"
    result_field = "report_uri"

    def url_from_result(self, value: Any) -> str:
        uri = find_field(value, self.result_field)
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            return ""
        parts = uri.rstrip("/").split("/")
        if len(parts) < 4 or parts[-1] != "reports":
            return ""
        return ui_url(page_url(parts[-3], parts[-2]))


# --- S3 (through tasks.storage, with the S3 connection's settings) -----------------------------


class ReportStoreError(Exception):
    """S3 could not be read (unreachable, no credentials, no bucket); the message says why."""


@dataclass
class RunSummary:
    """What the runs list shows for one run (read from its results.json)."""

    entry: RunEntry
    chosen: str = ""
    model_version: str = ""
    metric: str = ""
    mlflow_run_url: str = ""
    model_version_url: str = ""
    problem: str = ""
    older: bool = False
    url: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.url = f"runs/{quote(self.entry.model, safe='')}/{quote(self.entry.run_id, safe='')}/"


_results_cache: dict[tuple[str, str], dict[str, Any]] = {}


@contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """tfopt's storage errors (already classified, with their fix) become ReportStoreError."""
    from tasks.errors import TfoptError

    try:
        yield
    except TfoptError as exc:
        log.warning("%s failed: %s", what, exc)
        raise ReportStoreError(str(exc)) from exc


class ReportStore:
    """Published reports under the run root (`<root>/<model>/<run_id>/reports/`), read through
    `tasks.storage` with the settings of the S3 connection (`TFOPT_S3_CONN_ID`, default
    `tfopt_s3`; the API server's environment when it is not defined)."""

    def __init__(self) -> None:
        from tfopt_connections import conn_ids_from_env, s3_settings

        from tasks import storage

        with _storage_errors("Reading the S3 connection"):
            storage.configure_s3(s3_settings(conn_ids_from_env()[0], in_task=False))
        self.root = storage.default_run_root()

    @property
    def location(self) -> str:
        return f"{self.root.rstrip('/')}/"

    def reports_uri(self, model: str, run_id: str, name: str = "") -> str:
        from tasks import storage

        uri = storage.join_uri(self.root, model, run_id, REPORTS)
        return storage.join_uri(uri, name) if name else uri

    def list_runs(self, limit: int = RUNS_LIMIT, model: str | None = None) -> list[RunEntry]:
        """Runs with a published report (manifest present), newest first."""
        from tasks import runs

        with _storage_errors(f"Listing {self.location}"):
            return runs.list_runs(model, limit=limit)

    def manifest(self, model: str, run_id: str) -> dict[str, Any] | None:
        """The report folder's manifest, or None when the folder is absent or incomplete."""
        from tasks import storage

        with _storage_errors(f"Reading the manifest of {self.reports_uri(model, run_id)}"):
            manifest = storage.read_manifest(self.reports_uri(model, run_id))
        return None if manifest is None else manifest.to_dict()

    def results(self, entry: RunEntry) -> dict[str, Any]:
        """results.json of a published run (immutable once published, so cached)."""
        from tasks import storage

        uri = self.reports_uri(entry.model, entry.run_id, RESULTS)
        cache_key = (uri, entry.published.isoformat() if entry.published else "")
        if entry.published is not None and cache_key in _results_cache:
            return _results_cache[cache_key]
        with _storage_errors(f"Reading {uri}"):
            data = storage.get_json(uri)
        if not isinstance(data, dict):
            raise ReportStoreError(f"{uri} is not a JSON object")
        if entry.published is not None:
            if len(_results_cache) > 512:
                _results_cache.clear()
            _results_cache[cache_key] = data
        return data

    def read(self, model: str, run_id: str, name: str) -> bytes:
        """One published report file."""
        from tasks import storage

        uri = self.reports_uri(model, run_id, name)
        with _storage_errors(f"Reading {uri}"):
            return storage.get_bytes(uri)


def summarize(store: ReportStore, entry: RunEntry) -> RunSummary:
    """One row of the runs list; a run whose results.json is unreadable says so."""
    from tfopt_results import OlderResultsError, run_summary

    try:
        cells = run_summary(store.results(entry))
    except OlderResultsError as exc:
        return RunSummary(entry, problem=str(exc), older=True)
    except ReportStoreError as exc:
        return RunSummary(entry, problem=str(exc))
    return RunSummary(
        entry,
        chosen=cells["chosen"],
        model_version=cells["model_version"],
        metric=cells["metric"],
        mlflow_run_url=public_url(cells["mlflow_run_url"]),
        model_version_url=public_url(cells["model_version_url"]),
    )


def manifest_files(manifest: dict[str, Any]) -> set[str] | None:
    """File names a manifest lists, or None if its layout is not one this page knows."""
    files = manifest.get("files")
    if isinstance(files, dict):  # tasks.storage: {relative posix path: sha256}
        return {str(name) for name in files}
    if isinstance(files, list):
        names = (item.get("path") if isinstance(item, dict) else item for item in files)
        return {str(name) for name in names if name}
    return None


# --- pages --------------------------------------------------------------------------------------

# Opens external links (MLflow) in a new tab from Airflow's page: the UI frames this page in a
# sandbox without allow-popups, so a target=_blank link inside the frame would do nothing.
EXTERNAL_LINK_SCRIPT = """
document.addEventListener("click", function (event) {
  var link = event.target.closest && event.target.closest("a[data-external]");
  if (!link || window.top === window) { return; }
  try {
    var doc = window.top.document;
    var proxy = doc.createElement("a");
    proxy.href = link.href;
    proxy.target = "_blank";
    proxy.rel = "noopener noreferrer";
    doc.body.appendChild(proxy);
    proxy.click();
    proxy.remove();
    event.preventDefault();
  } catch (err) { /* not same-origin: let the browser follow the link */ }
});
""".strip()


def _page_csp() -> str:
    digest = base64.b64encode(hashlib.sha256(EXTERNAL_LINK_SCRIPT.encode()).digest()).decode()
    return (
        f"default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
    )


def _fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(UI_DIR / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_fmt_time, url=public_url)
    env.globals.update(script=EXTERNAL_LINK_SCRIPT, plots=PLOTS, limit=RUNS_LIMIT)
    return env


def _valid_segment(value: str) -> bool:
    """A model name or run id usable as one S3 key segment."""
    return bool(value) and "/" not in value and value not in (".", "..")


@dataclass(frozen=True)
class Pages:
    """Renders the plugin's HTML pages (Jinja templates, autoescaped) with its security headers."""

    templates: Any
    headers: dict[str, str]

    def render(self, template: str, status: int, context: dict[str, Any]) -> Response:
        from fastapi.responses import HTMLResponse

        html = self.templates.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=self.headers)


def _index(pages: Pages, model: str | None) -> Response:
    from tfopt_connections import conn_ids_from_env

    context: dict[str, Any] = {"model": model, "runs": [], "error": "", "location": ""}
    context["s3_conn_id"] = conn_ids_from_env()[0]
    status = 200
    try:
        store = ReportStore()
        context["location"] = store.location
        entries = store.list_runs(RUNS_LIMIT, model if model and _valid_segment(model) else None)
        with ThreadPoolExecutor(max_workers=8) as pool:
            context["runs"] = list(pool.map(lambda e: summarize(store, e), entries))
    except ReportStoreError as exc:
        context["error"], status = str(exc), 503
    return pages.render("index.html", status, context)


def _run(pages: Pages, model: str, run_id: str) -> Response:
    from tfopt_results import OlderResultsError, run_view

    context: dict[str, Any] = {"model": model, "run_id": run_id, "error": "", "older": ""}
    status = 200
    try:
        store = ReportStore()
        valid = _valid_segment(model) and _valid_segment(run_id)
        manifest = store.manifest(model, run_id) if valid else None
        if manifest is None:
            context["error"] = (
                f"No published report for model {model!r}, run {run_id!r} in {store.location} "
                "(unknown run, or its report is not complete yet)."
            )
            status = 404
        else:
            context["files"] = manifest_files(manifest) or set(REPORT_FILES)
            context["view"] = run_view(store.results(RunEntry(model, run_id, None)))
    except OlderResultsError as exc:
        context["older"] = str(exc)
    except ReportStoreError as exc:
        context["error"], status = str(exc), 503
    return pages.render("error.html" if context["error"] else "run.html", status, context)


def _file(model: str, run_id: str, name: str) -> Response:
    from fastapi.responses import PlainTextResponse, Response

    if name not in REPORT_FILES or not (_valid_segment(model) and _valid_segment(run_id)):
        return PlainTextResponse("Not found", status_code=404)
    try:
        store = ReportStore()
        manifest = store.manifest(model, run_id)
        listed = manifest_files(manifest) if manifest is not None else set()
        if manifest is None or (listed is not None and name not in listed):
            return PlainTextResponse("Not found (not in a published report)", status_code=404)
        body = store.read(model, run_id, name)
    except ReportStoreError as exc:
        return PlainTextResponse(str(exc), status_code=503)
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"}
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = REPORT_HTML_CSP
    return Response(body, media_type=REPORT_FILES[name], headers=headers)


def _authorization_dependencies() -> list[Any]:
    """Only Airflow users who may read the optimisation DAG's runs see the page (API server)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends

    return [Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))]


def create_app(*, require_auth: bool = True) -> FastAPI:
    """The plugin's web app: runs list, one run's report, its files streamed from S3.

    Args:
        require_auth: check the caller's Airflow session (the API server's auth manager); tests
            that serve the app without Airflow pass False.
    """
    from fastapi import APIRouter, FastAPI
    from fastapi.responses import FileResponse

    app = FastAPI(title="tfopt optimisation runs", docs_url=None, redoc_url=None, openapi_url=None)
    pages = Pages(
        _templates(), {"Content-Security-Policy": _page_csp(), "X-Content-Type-Options": "nosniff"}
    )
    router = APIRouter(dependencies=_authorization_dependencies() if require_auth else [])

    # Route functions carry no Request/Response annotations: FastAPI resolves annotations in
    # this module's globals, where those names exist only for type checkers.
    @app.get("/icon.svg", include_in_schema=False)
    def icon():
        return FileResponse(UI_DIR / "static" / "icon.svg", media_type="image/svg+xml")

    @router.get("/")
    def index(model: str | None = None):
        return _index(pages, model)

    @router.get("/runs/{model}/{run_id}/")
    def run(model: str, run_id: str):
        return _run(pages, model, run_id)

    @router.get("/runs/{model}/{run_id}/files/{name}")
    def report_file(model: str, run_id: str, name: str):
        return _file(model, run_id, name)

    app.include_router(router)
    return app


class LazyASGIApp:
    """An ASGI app that builds the real one on first request: importing the plugin stays cheap."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        with self._lock:
            if self._app is None:
                self._app = self._factory()
            return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


# --- the plugin ---------------------------------------------------------------------------------


class TfoptPlugin(AirflowPlugin):
    """MLflow links on the pipeline's tasks and an "Optimise" page in the UI's navigation."""

    name = PLUGIN_NAME
    global_operator_extra_links = [MlflowRunLink(), ModelVersionLink(), OptimisationReportLink()]
    fastapi_apps = [{"app": LazyASGIApp(create_app), "url_prefix": URL_PREFIX, "name": "tfopt"}]
    external_views = [
        {
            "name": "Optimise",
            "href": page_url(),
            "icon": f"{page_url()}icon.svg",
            "url_route": UI_ROUTE,
            "destination": "nav",
            "nav_top_level": True,
        }
    ]
