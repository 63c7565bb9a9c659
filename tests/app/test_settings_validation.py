"""Settings forms: validation as the user types, the message beside the field, and Start blocked."""

from __future__ import annotations

from studio_window import open_digits_window

from lora_studio.core import available_variants


def test_bad_values_show_their_message_and_block_start(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    session, panel = window.session, window.settings_panel
    validity: list[tuple[bool, str]] = []
    session.sig_validity_changed.connect(lambda ok, message: validity.append((ok, message)))

    rank = panel.row("lora.r")
    rank.editor.clear()
    qtbot.keyClicks(rank.editor, "0")
    assert rank.error() == "r must be an integer >= 1, got 0"
    assert session.config.lora.r == 4  # the config keeps its last good value
    assert not session.is_valid() and session.config_error == rank.error()
    assert validity[-1] == (False, rank.error())

    rank.editor.clear()
    qtbot.keyClicks(rank.editor, "12")
    assert rank.error() is None and session.config.lora.r == 12
    assert session.is_valid() and validity[-1] == (True, "")

    lr = panel.row("training.lr")
    lr.set_text("fast")
    assert lr.error() == "training.lr must be a number, got 'fast'"
    assert not session.is_valid()
    lr.set_text("3e-4")
    assert session.config.training.lr == 3e-4 and lr.editor.text() == "3e-4"  # the typed form is kept
    assert session.is_valid()


def test_a_refusal_that_depends_on_another_field_clears_when_that_field_is_fixed(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    panel, session = window.settings_panel, window.session
    panel.row("training.grad_accumulation").set_text("5")
    assert "multiple of grad_accumulation" in panel.row("training.grad_accumulation").error()
    panel.row("training.batch_size").set_text("30")
    assert session.config.training.batch_size == 30
    assert session.config.training.grad_accumulation == 5  # retried once batch 30 made it valid
    assert session.is_valid() and panel.row("training.grad_accumulation").error() is None


def test_variant_form_is_generated_from_its_settings(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    panel, session = window.settings_panel, window.session
    variant = next(v for v in available_variants() if any(f.type_name in ("int", "float") for f in v.settings_fields()))
    panel.set_variant(variant.name)
    assert session.config.lora.variant == variant.name
    assert variant.description[:40] in panel.variant_description.text()
    fields = variant.settings_fields()
    assert sorted(k.rpartition(".")[2] for k in panel.rows if k.startswith("lora.variant_settings.")) == sorted(
        f.name for f in fields
    )
    number = next(f for f in fields if f.type_name in ("int", "float") and not f.choices)
    row = panel.row(f"lora.variant_settings.{number.name}")
    row.set_text("not a number")
    assert row.error() and not session.is_valid()
    panel.set_variant("lora")  # a new variant starts from its defaults; the old form's refusals go with it
    assert session.config.lora.variant_settings == {} and session.is_valid()


def test_precision_and_batch_change_the_memory_estimate(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    panel, counts = window.settings_panel, window.counts_panel
    counts.wait_until_current()
    before = counts.estimate.memory.activations
    panel.row("training.batch_size").set_text("64")
    counts.wait_until_current()
    assert counts.estimate.memory.activations == 2 * before
    panel.row("training.precision").set_text("bfloat16")
    assert window.session.config.training.precision == "bfloat16"
    counts.wait_until_current()
    # Half the bytes at twice the batch: the activations' bf16 tensors halve; the loss's float32 copies do not.
    assert before < counts.estimate.memory.activations < 1.2 * before


def test_samples_settings_edit_the_config_and_follow_it(qtbot) -> None:
    """Prompts one per line (blank lines ignored), the examples count refused when negative."""
    import dataclasses

    from lora_studio.app.panels.settings_panel import SettingsPanel
    from lora_studio.app.state.session import StudioSession

    session = StudioSession()
    panel = SettingsPanel(session)
    qtbot.addWidget(panel)
    panel.prompts_edit.setPlainText("Once upon a time\n\n  Th' ship\n")
    assert session.config.samples.prompts == ["Once upon a time", "  Th' ship"]
    panel.row("samples.count").set_text("-2")
    assert session.config.samples.count == 8 and "samples.count" in session.field_errors
    assert "samples.count" in (panel.row("samples.count").error() or "")
    panel.row("samples.count").set_text("3")
    assert session.config.samples.count == 3 and "samples.count" not in session.field_errors
    config = session.config
    session.set_config(config.replace(samples=dataclasses.replace(config.samples, prompts=["Q: why?"])))
    assert panel.prompts_edit.toPlainText() == "Q: why?"
