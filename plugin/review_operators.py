"""The review loop's operators: apply an audit's review decisions (and re-audit the result).

Thin shells over :func:`noise_audit.apply_review` and :func:`noise_audit.audit`;
the form checks the output field with the library's own rule.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import noise_audit as na
from noise_audit.errors import NoiseAuditError
from noise_audit.store.applied import check_out_field
from noise_audit.store.runs import list_audits, load_audit


def reviewed_key(key):
    """The key a re-audit of ``key``'s applied review gets by default."""
    return f"{key}_reviewed"


class ApplyNoiseReview(foo.Operator):
    """Writes the corrected label field; optionally re-audits it, warm-started from the audit."""

    @property
    def config(self):
        return foo.OperatorConfig(name="apply_noise_review", label="Noise audit: apply review",
                                  description="Write a new label field with the review's corrections "
                                              "(the audited labels are never changed), then re-audit it",
                                  icon="task_alt", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        keys = list_audits(ctx.dataset)
        if not keys:
            prop = inputs.view("error", types.Error(label="This dataset has no noise audit to apply"))
            prop.invalid = True
            return types.Property(inputs, view=types.View(label="Apply review"))
        key = ctx.params.get("key") or keys[-1]
        inputs.enum("key", keys, default=key, required=True, label="Audit", view=types.DropdownView())
        config, _ = load_audit(ctx.dataset, key)
        default_out = f"{config.label_field}_reviewed"
        inputs.str("out_field", default=default_out, required=True, label="New label field",
                   description=f"{config.label_field} with the accepted corrections; unsure and kept samples tagged")
        try:
            check_out_field(ctx.dataset, key, config.label_field, ctx.params.get("out_field") or default_out)
        except NoiseAuditError as e:
            prop = inputs.view("out_field_error", types.Error(label=str(e)))
            prop.invalid, prop.error_message = True, str(e)
        inputs.bool("reaudit", default=True, label="Re-audit the new field (warm start, cached features)")
        inputs.str("reaudit_key", default=reviewed_key(key), label="Key of the re-audit (replaced if it exists)")
        return types.Property(inputs, view=types.View(label="Apply review"))

    def execute(self, ctx):
        key = ctx.params["key"]
        config, _ = load_audit(ctx.dataset, key)
        out_field = ctx.params.get("out_field") or f"{config.label_field}_reviewed"
        out = na.apply_review(ctx.dataset, key, out_field=out_field)
        if ctx.params.get("reaudit", True):
            new_key = ctx.params.get("reaudit_key") or reviewed_key(key)
            results = na.reaudit(ctx.dataset, key, out_field, new_key=new_key, overwrite=True, progress=False)
            out["reaudit_key"], out["num_label_issues"] = new_key, int(results.num_label_issues)
        ctx.ops.reload_dataset()
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        for name, label in (("out_field", "New label field"), ("corrected", "Labels corrected"), ("kept", "Kept"),
                            ("unsure", "Unsure (tagged)"), ("reaudit_key", "Re-audit key"),
                            ("num_label_issues", "Estimated label errors after the re-audit")):
            outputs.str(name, label=label)
        return types.Property(outputs)

