"""The HTML site, from Jinja2 templates (``report/templates/``) and one stylesheet: every executed
notebook as a page (code hidden, no console noise, links to the index and the next page), the
profile's index page (the verdicts first, then the paper's order), an error browser per model, and
the sweep's index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import yaml
from markupsafe import Markup

from kvasir_utils import artefacts, datasets
from kvasir_utils.analysis import audit, compare, departures, metrics, paper, runs, stats, verdicts
from kvasir_utils.analysis.sweeps import DEFAULT_READING
from kvasir_utils.artefacts import Figure, ReportFolder, Table, model_folder
from kvasir_utils.config import Config, cached_name
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import write_text_atomic
from kvasir_utils.provenance import describe_commit, describe_runtime, describe_weights, environment, provenance
from kvasir_utils.report import formats, model_card, outputs, tables
from kvasir_utils.report.outputs import banner_html, table_html
from kvasir_utils.report.pages import TEMPLATES, copy_into, copy_stylesheet, rel, write_page

ORDER = ("01", "02", "03", "04", "05", "06", "07", "08")  # notebook pages in the paper's order


def _figure(path: Path, root: Path, classes: list[str] | None = None) -> Markup:
    """A saved figure with its caption (``outputs.CAPTIONS``; ``classes``: the run's), or nothing when it
    was not made."""
    if not path.exists():
        return Markup("")
    text = outputs.caption(path.stem, classes)
    alt = Markup.escape(text or path.stem)
    return Markup(f'<figure><img class="kvasir-figure" src="{rel(path, root)}" alt="{alt}">'
                  f"<figcaption>{Markup.escape(text)}</figcaption></figure>")


# -- notebook pages ---------------------------------------------------------------------
def notebook_title(executed: Path) -> str:
    """The notebook's own heading (its first Markdown line), for the tab and the links."""
    import nbformat

    for cell in nbformat.read(executed, as_version=4).cells:
        if cell.cell_type == "markdown":
            return cell.source.splitlines()[0].lstrip("# ").strip()
    return executed.stem


def render_notebook(executed: Path, dest: Path, nav: dict) -> Path:
    """An executed notebook as a reader's page: outputs only, code hidden, no online scripts, the
    study's stylesheet, and ``nav`` (previous, next, the .ipynb) at the top and the bottom."""
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(executed, as_version=4)
    title = nav["title"]
    notebook.metadata["title"] = title
    exporter = HTMLExporter(template_name="kvasir_notebook", extra_template_basedirs=[str(TEMPLATES)],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": title}, "kvasir_nav": nav})
    return write_text_atomic(dest, body)


def _ordered(cfg: Config, executed: list[Path]) -> list[Path]:
    def key(path: Path):
        number, _, model = path.stem.partition("-")
        models = list(cfg.train.models)
        return number[:2], models.index(model) if model in models else len(models), path.stem
    return sorted(executed, key=key)


def render_pages(cfg: Config) -> list[tuple[Path, str]]:
    """Every executed notebook of the profile as a page, in order, each linking the next."""
    executed = _ordered(cfg, [p for p in cfg.run.notebooks.glob("*.ipynb") if not p.name.endswith(".failed.ipynb")])
    if not executed:
        raise KvasirError(f"no executed notebooks in {cfg.run.notebooks}; run "
                          f"`make reproduce PROFILE={cfg.profile_argument}`")
    folder = cfg.report.html
    titles = [notebook_title(p) + (f" ({formats.model_name(p.stem.partition('-')[2])})" if "-" in p.stem else "")
              for p in executed]
    pages = []
    for i, path in enumerate(executed):
        nav = {"title": titles[i], "notebook": rel(copy_into(path, cfg.report.notebook_copy(path.name)), folder),
               "previous": {"href": f"{executed[i - 1].stem}.html", "title": titles[i - 1]} if i else None,
               "next": {"href": f"{executed[i + 1].stem}.html", "title": titles[i + 1]} if i + 1 < len(executed)
               else None}
        pages.append((render_notebook(path, folder / f"{path.stem}.html", nav), titles[i]))
    return pages


# -- the profile's index ------------------------------------------------------------------
def render_reports(cfg: Config) -> Path:
    """Every notebook page, an error browser per evaluated model and ``reports/<profile>/index.html``."""
    copy_stylesheet(cfg.report_dir)
    pages = render_pages(cfg)
    evaluations = runs.read_evaluations(cfg, required=False)
    browsers = [render_error_browser(cfg, model, predictions) for model, (_, predictions) in evaluations.items()]
    cards = model_card.render_model_cards(cfg)
    index = cfg.report.index
    write_page("index.html.j2", index, **index_context(cfg, pages, browsers, evaluations, cards))
    return index



def _verdict_summary(card: pd.DataFrame, cfg: Config) -> str:
    reason = departures.why_not_comparable(cfg)
    if reason:
        return f"Not comparable with the paper: {reason}. The table shows the numbers all the same."
    run = card[card["verdict"] != "not run"]
    counts = run["verdict"].value_counts()
    parts = [f"{counts[v]} {v}" for v in ("consistent with the paper", "below the paper", "above the paper",
                                           "too few runs to tell") if v in counts]
    return f"Of the paper's {len(run)} claims this run could check: " + ", ".join(parts) + "."


def _model_section(cfg: Config, model: str, record: dict, predictions: pd.DataFrame, browser: Path) -> dict:
    root, report = cfg.report_dir, cfg.report
    classes = cfg.classes
    reported = paper.reported(model, classes)  # {} unless the run's classes are Kvasir v2's
    y_true, y_pred = predictions["true"].to_numpy(), predictions["pred"].to_numpy()
    table1 = metrics.classification_table(y_true, y_pred, classes)
    table2 = metrics.confusion_table(y_true, y_pred, classes)
    auc = metrics.roc_auc_table(y_true, predictions[artefacts.probability_columns(classes)].to_numpy(), classes)
    name = formats.model_name(model)
    links = Markup(" · ").join(Markup(f'<a href="{href}">{Markup.escape(text)}</a>') for href, text in (
        *((rel(copy_into(source, report.run_file(model, source.name)), root), source.name)
          for source in (cfg.run.predictions(model), cfg.run.metrics(model))),
        (rel(cfg.report.notebook_page(f"04_evaluate-{model_folder(model)}"), root), "the evaluation notebook's page"),
        (rel(browser, root), "error browser")))
    return {
        "id": model, "name": name, "links": links, "browser": rel(browser, root),
        "table1_heading": tables.paper_heading("Table 1", "per-class precision, recall, F1, specificity and support",
                                               name, reported.get("table1") is not None),
        "table1": Markup("".join(table_html(part, caption=caption, missing=formats.NOT_REPORTED)
                                 for part, caption in tables.table1_parts(table1, reported.get("table1"), name))),
        "f1_figure": _figure(report.figure(Figure.of_model(model, "f1_vs_paper")), root, cfg.classes),
        "table2_heading": tables.paper_heading("Table 2", "confusion matrix", name,
                                               reported.get("table2") is not None),
        "table2": Markup(_table2_html(table2, reported.get("table2"), rel(browser, root), classes, name)),
        "abbreviations": compare.abbreviations_sentence(classes),
        "confusion_figure": _figure(report.figure(Figure.of_model(model, "confusion")), root, cfg.classes),
        "roc_auc": Markup(table_html(paper.versus(auc.to_frame(), reported.get("roc_auc")),
                                     caption=f"ROC-AUC of {name}, one class against the rest"
                                     + (", beside the paper's" if reported.get("roc_auc") is not None else ""),
                                     missing=formats.NOT_REPORTED)),
        "roc_figure": _figure(report.figure(Figure.of_model(model, "roc")), root, cfg.classes),
        "figures": [_figure(report.figure(Figure.of_model(model, kind)), root, cfg.classes)
                    for kind in ("figure1_predictions", "figure2_curves", "figure3_gradcam")],
    }


def _table2_html(ours: pd.DataFrame, reported: pd.DataFrame | None, browser: str, classes: list[str],
                 name: str) -> str:
    """Table 2 (``tables.table2_parts``); this run's non-empty cells link to their images in the browser."""
    *papers, (shown, caption) = tables.table2_parts(ours, reported, name)
    shown = shown.astype(object)
    names = compare.abbreviation_names(classes)
    for true in ours.index:
        for pred in ours.columns:
            if ours.loc[true, pred]:
                target = f"{browser}#true={quote(names.get(true, true))}&pred={quote(names.get(pred, pred))}"
                shown.loc[true, pred] = Markup(f'<a href="{target}">{Markup.escape(shown.loc[true, pred])}</a>')
    return "".join(table_html(table, caption=text) for table, text in (*papers, (shown, caption)))


def _audit_section(cfg: Config) -> dict | None:
    """The index's audit, from notebook 07's tables (nothing before 07 has run)."""
    report, root = cfg.report, cfg.report_dir
    headline = _audit_headline(cfg)
    if headline is None:
        return None
    box_rates = pd.read_csv(report.table(Table.GUIDE_BOX_RATES))
    shown = headline[["accuracy", "masked_accuracy", "masked_change", "twin_share", "accuracy_with_twin",
                      "accuracy_without_twin", "twin_gap", "ece", "brier"]].rename(index=formats.model_name)
    figures = [_figure(report.figure(Figure.GUIDE_BOX_RATES), root, cfg.classes)]
    figures += [_figure(report.figure(Figure.of_model(model, "reliability")), root, cfg.classes)
                for model in headline.index]
    sentences = audit.audit_sentences(headline.rename(index=formats.model_name), box_rates, cfg.eval.confidence)
    return {"sentences": sentences,
            "table": Markup(table_html(shown, caption="The audit in numbers")), "figures": figures}


def _audit_headline(cfg: Config) -> pd.DataFrame | None:
    path = cfg.report.table(Table.AUDIT_HEADLINE)
    return pd.read_csv(path, index_col=0) if path.exists() else None


def index_context(cfg: Config, pages: list[tuple[Path, str]], browsers: list[Path], evaluations: dict,
                  cards: Markup | None = None) -> dict:
    root = cfg.report_dir
    claims = verdicts.claims_table(cfg, evaluations, verdicts.read_latest_seed_sweep(cfg), _audit_headline(cfg))
    models = [_model_section(cfg, model, *evaluations[model], browser)
              for model, browser in zip(evaluations, browsers)]
    comparison, mcnemar = None, []
    if len(evaluations) >= 2:
        comparison = Markup("".join(table_html(part, caption=caption)
                                    for part, caption in tables.comparison_parts(compare.comparison_table(cfg))))
        mcnemar = compare.mcnemar_sentences(compare.paired_tests(cfg), formats.MODEL_NAMES)
    audit_part = _audit_section(cfg)
    toc = [("verdict", "Did this run reproduce the paper?")]
    toc += [(m["id"], f"{m['name']}: Table 1, Table 2, ROC-AUC, Figures 1-3") for m in models]
    comparison_title = " against ".join(formats.model_name(m) for m in evaluations) if len(evaluations) == 2 \
        else f"The {len(evaluations)} models side by side"
    toc += [("comparison", comparison_title)] if comparison else []
    toc += [("audit", "Audit: what inflates the score")] if audit_part else []
    toc += [("model-cards", "Model cards: what each trained model is for and where it fails")] if cards else []
    toc += [("pages", "Every page and file"), ("appendix", "Appendix: settings, readings and provenance")]
    found = departures.departures(cfg)
    data = datasets.dataset_title(cfg.data.dataset, cfg.data.name)
    note = f"This run departs from the paper's protocol in {len(found)} setting(s): see the appendix." if len(found) \
        else "This run follows the paper's protocol."
    return {
        "title": f"{data} study: {cfg.profile}", "root": "", "heading": f"Transfer learning on {data}: "
        "reproduction report", "profile": cfg.profile, "generated": cfg.generated_data,
        "banner": Markup(banner_html(cfg, f"Profile '{cfg.profile}'. {note}", page="index")),
        "verdict_summary": _verdict_summary(claims, cfg), "level": f"{cfg.eval.confidence:.0%}",
        "variance_note": verdicts.variance_note(cfg, claims),
        "card": Markup(table_html(tables.card(claims), caption="The paper's claims")), "toc": toc,
        "models": models, "comparison": comparison, "comparison_title": comparison_title, "mcnemar": mcnemar,
        "audit": audit_part, "model_cards": cards,
        "pages": [(rel(page, root), title) for page, title in pages]
                 + [(rel(b, root), f"Error browser: {formats.model_name(b.stem.removeprefix('browser-'))}")
                    for b in browsers]
                 + [(rel(copy_into(p, cfg.report.notebook_copy(p.name)), root), f"executed notebook {p.name}")
                    for p in sorted(cfg.run.notebooks.glob("*.ipynb")) if not p.name.endswith(".failed.ipynb")]
                 + [(rel(p, root), f"split file {p.name} (make splits)" if p.suffix == ".csv" else
                     "how the split files were made, with their SHA-256 (make splits)")
                    for p in sorted(cfg.report.splits.glob("*")) if p.suffix in (".csv", ".md")],
        "tables": [(t.stem, rel(t, root), rel(t.with_suffix(".tex"), root))
                   for t in sorted(cfg.report.tables.glob("*.csv"))],
        "tensorboard": f"tensorboard --logdir {cfg.run_dir}",
        "departures_count": len(found), "departures": Markup(table_html(
            tables.departures_table(cfg), caption="Every setting that differs from the paper's protocol"))
        if len(found) else Markup("<p>None: this run uses the paper's protocol.</p>"),
        "readings": Markup(table_html(tables.readings(paper.readings_table(cfg.to_dict()), cfg),
                                      caption="The paper's ambiguous choices and this run's reading")),
        "consistency": paper.consistency_notes(), "provenance": Markup(_provenance_table(cfg, evaluations)),
        "environments": Markup(table_html(_environments(evaluations), caption="Versions and hardware")),
        "settings": yaml.safe_dump(cfg.to_dict(), sort_keys=False), "citations": paper.citations(cfg.data.dataset),
        "terms": paper.dataset_terms(cfg.data.dataset),
    }


def _provenance_table(cfg: Config, evaluations: dict) -> str:
    """Where these results came from (as each model's metrics.json recorded it when it was
    evaluated; the page's own rendering may be later)."""
    record = provenance(cfg)
    archive = record["archive"]
    made = {model: rec.get("provenance", {}) for model, (rec, _) in evaluations.items()}
    rows = {**{f"study commit of the {model} results": describe_commit(found) for model, found in made.items()},
            **{f"requirements.lock SHA-256 of the {model} results": found.get("lock_sha256") or "none"
               for model, found in made.items()},
            "study commit this page was rendered at": describe_commit(record),
            "requirements.lock SHA-256 now": record["lock_sha256"] or "none",
            "profile": record["profile"], "overrides (SET)": " ".join(record["overrides"]) or "none",
            "dataset archive": f"{archive['archive']}, {archive['bytes']:,} bytes" if archive else "not recorded",
            "dataset archive SHA-256 (compare it with yours)": archive["sha256"] if archive else "not recorded",
            **{f"{model} weights": describe_weights(found.get("weights")) for model, found in made.items()}}
    return table_html(pd.DataFrame({"value": rows}), kinds={"value": "text"}, caption="Provenance")


def _environments(evaluations: dict) -> pd.DataFrame:
    """Where each model was evaluated (recorded by notebook 04), and where this page was rendered."""
    columns = {"this page": environment()}
    for model, (record, _) in evaluations.items():
        columns[model] = {**record["environment"], "runtime": describe_runtime(record["runtime"])}
    return pd.DataFrame(columns).fillna(formats.NOT_RECORDED).astype(str).rename_axis("what")


# -- the error browser --------------------------------------------------------------------
# Its sortable columns: (row data key, header, the order of a first press).
BROWSER_COLUMNS = (("true", "true class", "ascending"), ("pred", "predicted", "ascending"),
                   ("confidence", "confidence", "descending"), ("right", "right?", "ascending"),
                   ("box", "guide box", "descending"))


def _read_flags(cfg: Config) -> pd.DataFrame | None:
    """Notebook 07's flags per validation image (None before it ran), by path."""
    path = cfg.report.table(Table.VALIDATION_IMAGES)
    return pd.read_csv(path, keep_default_na=False).set_index("path") if path.exists() else None


def _twin_distance(flag) -> str:
    """The Hamming distance to the image's near-duplicate in training, in words ("" when not recorded:
    notebook 07 ran before it kept the distance)."""
    distance = flag.get("twin_distance", "")
    return f"{formats.number(int(distance), 'count')} bits" if distance != "" else ""


def browser_rows(cfg: Config, predictions: pd.DataFrame, flags: pd.DataFrame | None) -> list[dict]:
    """What the error browser shows of each validation image (``flags``: ``_read_flags``)."""
    root, classes = cfg.report_dir, list(cfg.classes)
    rows = []
    for row in predictions.itertuples():
        flag = flags.loc[row.path] if flags is not None and row.path in flags.index else None
        twin = flag["twin"] if flag is not None else ""
        box = ("yes" if str(flag["has_box"]) == "True" else "no") if flag is not None else ""
        rows.append({"path": row.path, "thumb": rel(root / "thumbs" / cached_name(row.path), root),
                     "true": classes[row.true], "pred": classes[row.pred], "confidence": f"{row.confidence:.4f}",
                     "confidence_text": formats.number(row.confidence, "percent"),
                     "right": "yes" if row.true == row.pred else "no", "box": box or "no", "box_text": box,
                     "twin": twin, "twin_flag": "yes" if twin else "no",
                     "twin_thumb": rel(root / "thumbs" / cached_name(twin), root) if twin else "",
                     "twin_distance_text": _twin_distance(flag) if twin else ""})
    return rows


def render_error_browser(cfg: Config, model: str, predictions: pd.DataFrame) -> Path:
    """Every validation image of ``model`` as a row: thumbnail (a press enlarges it), true and
    predicted class, confidence, right or wrong, the guide box, a near-duplicate in training with its
    distance, shown side by side (from notebook 07, when it ran)."""
    heading, flags = f"{formats.model_name(model)}: every validation image", _read_flags(cfg)
    return write_page("browser.html.j2", cfg.report.error_browser(model), title=heading, root="",
                      banner=Markup(banner_html(cfg, f"Profile '{cfg.profile}'.", page="browser")),
                      heading=heading, classes=list(cfg.classes), columns=BROWSER_COLUMNS,
                      rows=browser_rows(cfg, predictions, flags), audited=flags is not None)


# -- a sweep's report ---------------------------------------------------------------------
def sweep_about(sweep) -> str:
    spec = sweep.spec
    return (f"Sweep '{sweep.name}' of profile '{sweep.base.profile}': {len(sweep.members)} runs "
            f"({len(spec.seeds)} seed(s) varying {spec.seed_setting}).")


def render_sweep_report(sweep, results: pd.DataFrame, executed: Path | None) -> Path:
    """Notebook 06 as a page, and the sweep's ``index.html``: its tables, figure and every run's
    report (``results``: ``run.sweep_aggregate.member_results``). Without ``executed`` (no run
    finished) the tables and figures of an earlier aggregation are removed, so none outlives its runs."""
    root = sweep.report_dir
    copy_stylesheet(root)
    verdicts.write_sweep_record(root, sweep.name, sweep.base.profile, sweep.spec.grid or sweep.spec.readings)
    if executed is None:
        for folder in ("tables", "figures", "html"):
            shutil.rmtree(root / folder, ignore_errors=True)
        page = None
    else:
        report = ReportFolder(root)
        nav = {"title": notebook_title(executed), "previous": None, "next": None,
               "notebook": rel(copy_into(executed, report.notebook_copy(executed.name)), report.html)}
        page = render_notebook(executed, report.notebook_page(executed.stem), nav)
    return write_page("sweep.html.j2", ReportFolder(root).index, **sweep_context(sweep, results, page))


def _csv_table(path: Path, shape, empty: str, caption: str) -> Markup:
    frame = pd.read_csv(path) if path.exists() else pd.DataFrame()
    return Markup(table_html(shape(frame), caption=caption) if len(frame) else f"<p>({Markup.escape(empty)})</p>")


def sweep_context(sweep, results: pd.DataFrame, page: Path | None) -> dict:
    root, report = sweep.report_dir, ReportFolder(sweep.report_dir)
    finished = int((results["status"] == "finished").sum())
    def shown(value) -> str:  # a setting's value as a profile writes it (null, true, a list without brackets)
        return value if isinstance(value, str) else json.dumps(value)

    grid = "; ".join(f"{k} = {' or '.join(map(shown, v))}" for k, v in sweep.spec.grid.items()) or ", ".join(
        f"{name} ({', '.join(f'{k}={json.dumps(v) if not isinstance(v, str) else v}' for k, v in settings.items())})"
        for name, settings in sweep.spec.readings.items()
    ) or "none"
    members = []
    for member, row in zip(sweep.members, results.itertuples()):
        members.append({"name": member.name, "status": row.status, "error": row.error,
                        "href": rel(member.report_index, root) if member.report_index.exists() else None})
    models = ", ".join(formats.model_name(m) for m in dict.fromkeys(results["model"]))
    intro = (f"Profile {sweep.base.profile}; models {models}; seeds "
             f"{', '.join(map(str, sweep.spec.seeds))} (varying {sweep.spec.seed_setting}); readings: {grid}. "
             f"{finished} of "
             f"{len(results)} runs "
             f"finished; every number below is over the finished runs, with a {sweep.base.eval.confidence:.0%} "
             f"Student-t interval across runs, kept inside the metric's bounds; fewer than {stats.MIN_RUNS} runs "
             "give no interval.")
    summary_path, paired_path = report.table(Table.SWEEP_SUMMARY), report.table(Table.SWEEP_PAIRED)
    card = None
    if summary_path.exists():  # the index's card, from the sweep's means over seeds (the profile's own reading)
        summary = pd.read_csv(summary_path)
        paired = pd.read_csv(paired_path) if paired_path.exists() else pd.DataFrame()
        default = {"summary": summary[summary["reading"] == DEFAULT_READING], "name": sweep.name,
                   "paired": paired[paired["reading"] == DEFAULT_READING] if len(paired) else paired}
        card = Markup(table_html(tables.card(verdicts.claims_table(sweep.base, {}, default)),
                                 caption="The paper's claims, from this sweep's runs (the profile's own reading)"))
    return {
        "title": f"Sweep {sweep.name}", "root": "", "heading": f"Sweep {sweep.name}: many runs, one answer",
        "card": card,
        "banner": Markup(banner_html(sweep.base, sweep_about(sweep), page="sweep")), "intro": intro,
        "summary": _csv_table(summary_path, tables.sweep_summary, "no finished run",
                              "Each metric's mean over the runs, per model and reading"),
        "paired": _csv_table(paired_path, tables.sweep_paired, "needs two models with runs of the same seed",
                             "Accuracy of the first model minus the second, paired by seed"),
        "ablation": _csv_table(report.table(Table.SWEEP_ABLATION), tables.sweep_ablation, "no finished run",
                               "Accuracy of each reading minus the profile's own reading, paired by seed"),
        "figures": [_figure(f, root) for f in sorted(report.figures.glob("*.png"))],
        "page": rel(page, root) if page else None, "members": members,
        "tables": [(t.stem, rel(t, root), rel(t.with_suffix(".tex"), root))
                   for t in sorted(report.tables.glob("*.csv"))],
    }
