"""The ``noise_audit`` panel: an audit's histograms, metrics, suspects and explanations,
and the review of the suspects (:mod:`.review_panel`).

All numbers come from :mod:`noise_audit.app.views` and :func:`noise_audit.most_influential`;
the panel only lays them out and turns clicks into grid views.
"""

import inspect

import fiftyone.operators as foo
import fiftyone.operators.types as types

import noise_audit as na
from noise_audit.app import views as nav
from noise_audit.app.plugin_install import PLUGIN_NAME as PLUGIN
from noise_audit.errors import NoiseAuditError
from noise_audit.reports.markdown import md
from noise_audit.store.runs import list_audits

from .review_panel import ReviewMixin, media_url

NO_TRUTH = "(none)"
# The library's defaults: rows of the suspect table, explaining images per side.
TOP_N = inspect.signature(nav.suspects_table).parameters["n"].default
K_EXPLAINED = inspect.signature(na.most_influential).parameters["k"].default
HISTOGRAMS = {"corruption_score": "Corruption score by given label", "influence": "Average influence by given label"}
METRIC_COLUMNS = (("signal", "Signal"), ("auroc", "AUROC"), ("average_precision", "AP"),
                  ("precision_at_k", "Precision@k"), ("recall_at_10pct", "Recall@10%"))
SUSPECT_COLUMNS = (("rank", "#"), ("given", "Given label"), ("predicted", "Predicted"), ("corruption_score", "Corruption"),
                   ("label_quality", "Label quality"), ("influence", "Avg influence"), ("self_influence", "Self-influence"))


def _fmt(value, digits=4):
    return f"{value:.{digits}g}" if isinstance(value, float) else value


class NoiseAuditPanel(ReviewMixin, foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(name="noise_audit", label="Noise audit", icon="troubleshoot", surfaces="grid",
                               help_markdown="Influence functions + cleanlab label quality: which labels look wrong?")

    # --- events ---------------------------------------------------------
    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.key = None
        self._review_reset(ctx)
        self._refresh(ctx)

    def on_change_key(self, ctx):
        ctx.panel.state.key = ctx.params.get("value")
        self._review_reset(ctx)  # the review queue belongs to one audit
        self._refresh(ctx)

    def on_change_truth(self, ctx):
        ctx.panel.state.truth_field = ctx.params.get("value")
        self._refresh(ctx)

    def on_change_selected(self, ctx):
        self._explain(ctx)

    def show_top_suspects(self, ctx):
        ctx.ops.set_view(nav.top_suspects(ctx.dataset, ctx.panel.state.key))

    def show_flagged(self, ctx):
        ctx.ops.set_view(nav.flagged(ctx.dataset, ctx.panel.state.key))

    def show_flipped(self, ctx):
        ctx.ops.set_view(nav.flipped(ctx.dataset, ctx.panel.state.key, self._truth(ctx)))

    def clear_view(self, ctx):
        ctx.ops.clear_view()

    def on_score_bar_click(self, ctx):
        self._show_bin(ctx, "corruption_score")

    def on_influence_bar_click(self, ctx):
        self._show_bin(ctx, "influence")

    def on_suspect_click(self, ctx):
        row = ctx.params.get("row")
        ids = ctx.panel.state.suspect_ids or []
        if isinstance(row, int) and 0 <= row < len(ids):
            ctx.ops.set_selected_samples([ids[row]])
            ctx.panel.state.explained_id = ids[row]
            self._explain(ctx, ids[row])

    # --- computation (all in the library) -------------------------------
    def _truth(self, ctx):
        truth = ctx.panel.state.truth_field
        return None if truth in (None, NO_TRUTH) else truth

    def _refresh(self, ctx):
        keys = list_audits(ctx.dataset)
        ctx.panel.state.keys = keys
        if not keys:
            ctx.panel.state.key = None
            return
        key = ctx.panel.state.key if ctx.panel.state.key in keys else keys[-1]
        ctx.panel.state.key = key
        candidates = nav.truth_fields(ctx.dataset)
        truth = ctx.panel.state.truth_field
        if truth not in candidates + [NO_TRUTH]:
            truth = nav.default_truth_field(ctx.dataset) or NO_TRUTH
        ctx.panel.state.truth_field = truth
        ctx.panel.state.set({"controls.key": key, "controls.truth_field": truth})  # what the dropdowns show
        truth = self._truth(ctx)

        summary = nav.summary(ctx.dataset, key, truth)
        ctx.panel.state.summary_md = self._summary_md(summary)
        edges = {}
        for signal in HISTOGRAMS:
            hist = nav.histogram(ctx.dataset, key, signal, truth)
            edges[signal] = hist["edges"]
            ctx.panel.data.set(f"hist_{signal}", nav.histogram_traces(hist))
        ctx.panel.state.edges = edges
        ctx.panel.data.metrics = [{"signal": s, **{k: _fmt(m[k]) for k in ("auroc", "average_precision", "precision_at_k", "recall_at_10pct")}}
                                  for s, m in summary["metrics"].items()]
        rows = nav.suspects_table(ctx.dataset, key, TOP_N, truth)
        ctx.panel.state.suspect_ids = [r["id"] for r in rows]
        ctx.panel.data.suspects = [
            {"rank": i + 1, **{c: _fmt(r[c]) for c, _ in SUSPECT_COLUMNS[1:]},
             **({"flipped": "yes" if r["flipped"] else "no"} if truth else {})}
            for i, r in enumerate(rows)
        ]
        self._explain(ctx)
        self._review_refresh(ctx)

    def _summary_md(self, s):
        return nav.summary_markdown(s)  # names escaped there

    def _show_bin(self, ctx, signal):
        bar_id = ctx.params.get("id")
        edges = (ctx.panel.state.edges or {}).get(signal)
        if not bar_id or not edges:
            return
        low, high, label, group = nav.bin_of({"edges": edges}, bar_id)
        ctx.ops.set_view(nav.score_bin(ctx.dataset, ctx.panel.state.key, signal, low, high, label, group, self._truth(ctx)))

    def _explain(self, ctx, sample_id=None):
        selected = list(ctx.selected or [])
        sample_id = sample_id or (selected[0] if len(selected) == 1 else None)
        key = ctx.panel.state.key
        if not sample_id or not key:
            ctx.panel.state.explanation = None
            return
        current = ctx.panel.state.explanation or {}
        if current.get("sample_id") == sample_id and current.get("key") == key:
            return  # already shown (the row action also changes the selection)
        try:
            out = na.most_influential(ctx.dataset, sample_id, key, k=K_EXPLAINED)
        except NoiseAuditError as e:
            ctx.panel.state.explanation = {"error": str(e)}
            return
        sample = ctx.dataset[sample_id]
        explanation = {"sample_id": sample_id, "key": key, "label": out["label"], "image": media_url(sample.filepath)}
        for kind in ("most", "least"):
            explanation[kind] = [{"image": media_url(e["filepath"]), "caption": f"{md(e['label'])}: {e['influence']:+.3g}"}
                                 for e in out[kind]]
        ctx.panel.state.explanation = explanation
        # The image views live in nested stacks; their values sit at the same paths.
        images = {"explain_selected": {"img_selected": explanation["image"]}}
        for kind in ("most", "least"):
            for i, e in enumerate(explanation[kind]):
                images[f"explain_{kind}_{i}"] = {f"img_{kind}_{i}": e["image"]}
        ctx.panel.state.explain_images = images

    # --- layout ----------------------------------------------------------
    def render(self, ctx):
        panel = types.Object()
        keys = ctx.panel.state.keys or []
        if not keys:
            panel.md("### No noise audit yet\n\nRun an audit to score every sample of this dataset for label errors: "
                     "a head fine-tuned on pretrained features, pyDVL influence functions and cleanlab label quality.",
                     name="empty_state")
            panel.btn("run_audit", label="Run noise audit", icon="troubleshoot", variant="contained",
                      on_click=f"{PLUGIN}/run_noise_audit", prompt=True)
            return types.Property(panel, view=types.GridView(align_x="center", align_y="center", orientation="vertical",
                                                            height=100, width=100, gap=2))
        key = ctx.panel.state.key
        truth = self._truth(ctx)
        controls = panel.h_stack("controls", align_x="left", gap=2)
        controls.enum("key", keys, default=key, label="Audit", view=types.DropdownView(), on_change=self.on_change_key)
        controls.enum("truth_field", [NO_TRUTH] + nav.truth_fields(ctx.dataset), default=ctx.panel.state.truth_field,
                      label="Known flips", view=types.DropdownView(), on_change=self.on_change_truth)
        panel.md(ctx.panel.state.summary_md or "", name="summary")

        buttons = panel.h_stack("buttons", align_x="left", gap=1)
        buttons.btn("show_top_suspects", label="Show top suspects", icon="sort", variant="contained",
                    on_click=self.show_top_suspects)
        buttons.btn("show_flagged", label="Show flagged", icon="flag", variant="outlined", on_click=self.show_flagged)
        if truth:
            buttons.btn("show_flipped", label="Show flipped", icon="shuffle", variant="outlined", on_click=self.show_flipped)
        buttons.btn("clear_view", label="Clear view", icon="clear", variant="outlined", on_click=self.clear_view)
        self._render_review(ctx, panel)

        if truth:
            table = types.TableView()
            for col, label in METRIC_COLUMNS:
                table.add_column(col, label=label)
            panel.list("metrics", types.Object(), view=table, label=f"Detection of flips in {md(truth)}")

        for signal, title in HISTOGRAMS.items():
            handler = self.on_score_bar_click if signal == "corruption_score" else self.on_influence_bar_click
            panel.plot(f"hist_{signal}", on_click=handler, width="100%", height="400px",
                       layout={"title": {"text": title}, "barmode": "stack", "showlegend": True,
                               "xaxis": {"title": {"text": nav.SIGNALS[signal]}}, "yaxis": {"title": {"text": "samples"}},
                               "legend": {"orientation": "h", "y": -0.3}, "margin": {"t": 40, "b": 40}},
                       config={"displayModeBar": False})
        panel.md("Click a bar to show its samples in the grid.", name="plot_hint")

        table = types.TableView()
        for col, label in SUSPECT_COLUMNS + ((("flipped", "Flipped"),) if truth else ()):
            table.add_column(col, label=label)
        table.add_row_action("select", self.on_suspect_click, label="Explain", icon="visibility", tooltip="Select and explain")
        panel.list("suspects", types.Object(), view=table, label=f"Top {TOP_N} suspects")

        self._render_explanation(ctx, panel)
        return types.Property(panel, view=types.GridView(orientation="vertical", width=100, gap=2, padding=2))

    def _render_explanation(self, ctx, panel):
        explanation = ctx.panel.state.explanation
        if not explanation:
            panel.md("Select one sample in the grid to see its most and least influential training images.",
                     name="explain_hint")
            return
        if "error" in explanation:
            panel.view("explain_error", types.Notice(label=md(explanation["error"])))  # the App renders it as Markdown
            return
        panel.md(f"#### Why {md(explanation['label'])}?\nThe training images that most support (▲) and most "
                 "oppose (▼) the selected sample's label, with their influence on its loss.", name="explain_title")
        row = panel.h_stack("explain_images", gap=1, align_x="left")
        col = row.v_stack("explain_selected", gap=0)
        col.view("img_selected", types.ImageView(height="96px", width="96px", alt="selected sample"))
        col.md("**selected**", name="cap_selected")
        for kind in ("most", "least"):
            for i, e in enumerate(explanation[kind]):
                col = row.v_stack(f"explain_{kind}_{i}", gap=0)
                col.view(f"img_{kind}_{i}", types.ImageView(height="96px", width="96px", alt=f"{kind} influential {i + 1}"))
                col.md(f"{'▲' if kind == 'most' else '▼'} {e['caption']}", name=f"cap_{kind}_{i}")
