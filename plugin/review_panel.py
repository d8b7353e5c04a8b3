"""The panel's review: one suspect (or a selection) at a time, decided with a click.

A mixin of :class:`~.panel.NoiseAuditPanel`. What it shows comes from
:mod:`noise_audit.app.review_views`; each button is one :func:`noise_audit.review`
(or :func:`noise_audit.undo_review`) call, after which the panel moves on to
the most suspicious undecided sample. Decisions go to the audit's
``{key}_review`` field, never to the audited labels.
"""

from urllib.parse import quote

import fiftyone.operators.types as types

import noise_audit as na
from noise_audit.app import review_views as rv
from noise_audit.app.plugin_install import PLUGIN_NAME as PLUGIN
from noise_audit.errors import NoiseAuditError
from noise_audit.store.review import default_reviewer

K_EXPLAINED = 3
IMG = "128px"


def media_url(filepath):
    """The App server's URL of a local image."""
    return "/media?filepath=" + quote(filepath, safe="")


_media = media_url


class ReviewMixin:
    # --- state ------------------------------------------------------------
    def _review_reviewer(self, ctx):
        user = getattr(ctx, "user", None)
        name = getattr(user, "email", None) or getattr(user, "name", None)
        return name or f"{default_reviewer()} (App)"

    def _review_reset(self, ctx):
        ctx.panel.state.review_active = False
        ctx.panel.state.review_skipped = []
        ctx.panel.state.review_stack = []

    def _review_refresh(self, ctx, sample_id=None):
        """Recomputes what the review shows; ``sample_id`` becomes the current suspect."""
        key = ctx.panel.state.key
        if not key:
            return
        try:
            ctx.panel.state.review_header = rv.header_md(na.review_estimates(ctx.dataset, key))
        except NoiseAuditError as e:  # an audit written before reviews
            ctx.panel.state.review_header = None
            ctx.panel.state.review_error = str(e)
            return
        ctx.panel.state.review_error = None
        if not ctx.panel.state.review_active:
            return
        skipped = list(ctx.panel.state.review_skipped or [])
        current = sample_id or rv.next_suspect(ctx.dataset, key, skip=skipped)
        ctx.panel.state.review_classes = rv.classes(ctx.dataset, key)
        upcoming = rv.queue(ctx.dataset, key, rv.QUEUE_N, skip=skipped + ([current] if current else []))
        ctx.panel.data.review_queue = [{"given": r["given"], "suggested": r["suggested"], "score": f"{r['score']:.3f}"}
                                       for r in upcoming]
        ctx.panel.state.review_queue_ids = [r["id"] for r in upcoming]
        if current is None:
            ctx.panel.state.review_current = None
            return
        row = rv.suspect(ctx.dataset, key, current)
        row["image"] = _media(row.pop("filepath"))
        ctx.panel.state.review_current = row
        # Image views read their value at their path in the panel's state (stack / stack / view).
        ctx.panel.state.review_item = {"review_image_col": {"review_image": row["image"]}}
        try:
            ex = rv.explanation(ctx.dataset, key, current, K_EXPLAINED)
        except NoiseAuditError as e:
            ctx.panel.state.review_explanation = {"error": str(e)}
            return
        shown = {kind: [{"image": _media(e["filepath"]), "caption": f"{e['label']} ({e['influence']:+.3g})"}
                        for e in ex[kind]] for kind in ("support", "oppose")}
        ctx.panel.state.review_explanation = shown
        ctx.panel.state.review_why = {f"review_why_{kind}_{i}": {f"review_why_img_{kind}_{i}": e["image"]}
                                      for kind, entries in shown.items() for i, e in enumerate(entries)}

    def _review_targets(self, ctx):
        selected = list(ctx.selected or [])
        if len(selected) > 1:
            return selected
        current = (ctx.panel.state.review_current or {}).get("id")
        return [current] if current else []

    def _review_decide(self, ctx, decision, label=None):
        targets = self._review_targets(ctx)
        if not targets:
            return
        try:
            na.review(ctx.dataset, ctx.panel.state.key, targets, decision, label=label,
                      reviewer=self._review_reviewer(ctx))
        except NoiseAuditError as e:
            ctx.ops.notify(str(e), variant="error")
            return
        ctx.panel.state.review_stack = list(ctx.panel.state.review_stack or []) + [targets]
        if len(targets) > 1:
            ctx.ops.clear_selected_samples()
        self._review_refresh(ctx)

    # --- events -------------------------------------------------------------
    def review_start(self, ctx):
        ctx.panel.state.review_active = True
        self._review_refresh(ctx)

    def review_accept(self, ctx):
        self._review_decide(ctx, "accept")

    def review_keep(self, ctx):
        self._review_decide(ctx, "keep")

    def review_unsure(self, ctx):
        self._review_decide(ctx, "unsure")

    def review_relabel(self, ctx):
        label = ctx.panel.state.review_class
        if not label:
            ctx.ops.notify("Choose the class first", variant="warning")
            return
        self._review_decide(ctx, "relabel", label=label)

    def on_change_review_class(self, ctx):
        ctx.panel.state.review_class = ctx.params.get("value")

    def review_skip(self, ctx):
        current = (ctx.panel.state.review_current or {}).get("id")
        if current:
            ctx.panel.state.review_skipped = list(ctx.panel.state.review_skipped or []) + [current]
        self._review_refresh(ctx)

    def review_undo(self, ctx):
        stack = list(ctx.panel.state.review_stack or [])
        if not stack:
            ctx.ops.notify("Nothing to undo", variant="info")
            return
        targets = stack.pop()
        out = na.undo_review(ctx.dataset, ctx.panel.state.key, targets, reviewer=self._review_reviewer(ctx))
        ctx.panel.state.review_stack = stack
        if out["skipped"]:
            ctx.ops.notify(f"{len(out['skipped'])} decisions were changed by another reviewer since; left as they are",
                           variant="warning")
        self._review_refresh(ctx, targets[0])

    def review_show(self, ctx):
        current = (ctx.panel.state.review_current or {}).get("id")
        if current:
            ctx.ops.set_selected_samples([current])

    def on_review_queue_click(self, ctx):
        row, ids = ctx.params.get("row"), ctx.panel.state.review_queue_ids or []
        if isinstance(row, int) and 0 <= row < len(ids):
            self._review_refresh(ctx, ids[row])

    # --- layout ---------------------------------------------------------------
    def _render_review(self, ctx, panel):
        panel.md("#### Review the suspects", name="review_title")
        if ctx.panel.state.review_error:
            panel.view("review_error_notice", types.Notice(label=ctx.panel.state.review_error))
            return
        panel.md(ctx.panel.state.review_header or "", name="review_header")
        if not ctx.panel.state.review_active:
            panel.btn("review_start", label="Start reviewing", icon="rate_review", variant="contained",
                      on_click=self.review_start)
            return
        row = ctx.panel.state.review_current
        if not row:
            panel.md("Every suspect has a decision. Apply the review to write the corrected label field.",
                     name="review_done")
        else:
            self._render_review_item(ctx, panel, row)
        actions = panel.h_stack("review_actions", align_x="left", gap=1)
        actions.btn("review_undo", label="Undo", icon="undo", variant="outlined", on_click=self.review_undo)
        actions.btn("review_apply", label="Apply review…", icon="task_alt", variant="outlined",
                    on_click=f"{PLUGIN}/apply_noise_review", prompt=True, params={"key": ctx.panel.state.key})
        table = types.TableView()
        for col, label in (("given", "Given"), ("suggested", "Suggested"), ("score", "Score")):
            table.add_column(col, label=label)
        table.add_row_action("review_jump", self.on_review_queue_click, label="Review", icon="rate_review",
                             tooltip="Review this sample now")
        panel.list("review_queue", types.Object(), view=table, label="Next in the queue")

    def _render_review_item(self, ctx, panel, row):
        selected = list(ctx.selected or [])
        target = (f"**{len(selected)} selected samples**: the buttons decide for all of them."
                  if len(selected) > 1 else
                  f"Suspect **#{row['rank']}** · score **{row['score']:.3f}**")
        decided = (f" · decided: {row['decision']}"
                   + (f" → {rv.esc_md(row['decided_label'])}" if row.get("decided_label") else "")) if row.get("decision") else ""
        item = panel.h_stack("review_item", gap=2, align_x="left")
        col = item.v_stack("review_image_col", gap=0)
        col.view("review_image", types.ImageView(height=IMG, width=IMG, alt="suspect under review"))
        text = item.v_stack("review_text", gap=1)
        text.md(f"{target}{decided}\n\nGiven label **{rv.esc_md(row['given'])}**, suggested "
                f"**{rv.esc_md(row['suggested'])}** ({row['confidence']:.0%})", name="review_facts")
        buttons = text.h_stack("review_buttons", gap=1, align_x="left")
        buttons.btn("review_accept", label=f"Accept {row['suggested']}", icon="check", variant="contained",
                    on_click=self.review_accept)
        buttons.btn("review_keep", label=f"Keep {row['given']}", icon="block", variant="outlined",
                    on_click=self.review_keep)
        buttons.btn("review_unsure", label="Unsure", icon="help", variant="outlined", on_click=self.review_unsure)
        buttons.btn("review_skip", label="Skip", icon="skip_next", variant="outlined", on_click=self.review_skip)
        buttons.btn("review_show", label="Select in grid", icon="visibility", variant="outlined",
                    on_click=self.review_show)
        relabel = text.h_stack("review_relabel_row", gap=1, align_x="left")
        relabel.enum("review_class", ctx.panel.state.review_classes or [], label="Another class",
                     view=types.DropdownView(), on_change=self.on_change_review_class)
        relabel.btn("review_relabel", label="Set class", icon="edit", variant="outlined", on_click=self.review_relabel)
        self._render_review_why(ctx, panel)

    def _render_review_why(self, ctx, panel):
        ex = ctx.panel.state.review_explanation or {}
        if "error" in ex:
            panel.view("review_why_error", types.Notice(label=ex["error"]))
            return
        panel.md("Training images that support (▲) and oppose (▼) the given label, with their influence on its loss:",
                 name="review_why_title")
        row = panel.h_stack("review_why", gap=1, align_x="left")
        for kind, mark in (("support", "▲"), ("oppose", "▼")):
            for i, e in enumerate(ex.get(kind, [])):
                col = row.v_stack(f"review_why_{kind}_{i}", gap=0)
                col.view(f"review_why_img_{kind}_{i}", types.ImageView(height="80px", width="80px",
                                                                        alt=f"{kind} {i + 1}"))
                col.md(f"{mark} {rv.esc_md(e['caption'])}", name=f"review_why_cap_{kind}_{i}")
