"""The Settings panel's Device row lists this machine's devices (core's available_devices, here
pretended to be two GPUs or none), "All GPUs" sets several processes and shows the DDP/FSDP row,
and a run over several processes goes through launch_processes into the Train tab's curves, with
Pause saving and stopping, Resume relaunching."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import Qt
from short_runs import short_digits

import lora_studio.app.panels.settings_panel as settings_panel
import lora_studio.app.state.run_controller as run_controller
from lora_studio.app.panels.run_panel import RunPanel
from lora_studio.app.panels.settings_panel import SettingsPanel, device_choices
from lora_studio.app.state.run_controller import IDLE, PAUSED, PAUSING, RunController
from lora_studio.app.state.session import StudioSession
from lora_studio.core import (
    CancelToken,
    CheckpointSaved,
    DeviceInfo,
    Finished,
    StepMetrics,
    TrainResult,
    available_devices,
    load_model,
)

GIB = 2**30
TWO_GPUS = [DeviceInfo("cpu", None, "CPU", 64 * GIB), DeviceInfo("cuda", 0, "NVIDIA H200", 140 * GIB),
            DeviceInfo("cuda", 1, "NVIDIA H200", 140 * GIB)]
RUN_TIMEOUT_MS = 30_000


def _labels(panel: SettingsPanel) -> list[str]:
    combo = panel.row("training.device").editor
    return [combo.itemText(i) for i in range(combo.count())]


def _panel(qtbot, monkeypatch, devices: list[DeviceInfo], session: StudioSession | None = None) -> SettingsPanel:
    monkeypatch.setattr(settings_panel, "available_devices", lambda: list(devices))
    panel = SettingsPanel(session or StudioSession())
    qtbot.addWidget(panel)
    panel.show()
    return panel


def test_two_gpus_are_listed_and_all_gpus_sets_two_processes_with_the_ddp_fsdp_row(qtbot, monkeypatch) -> None:
    panel = _panel(qtbot, monkeypatch, TWO_GPUS)
    assert _labels(panel) == ["Auto", "CPU", "GPU 0 — NVIDIA H200 (140 GiB)", "GPU 1 — NVIDIA H200 (140 GiB)",
                              "All GPUs (2)"]
    training = panel.session.config.training
    assert (training.device, training.processes) == ("auto", 1) and panel.device_row.current().label == "Auto"
    assert not panel.shows_strategy()
    panel.device_row.choose("All GPUs (2)")
    training = panel.session.config.training
    assert (training.device, training.processes, training.distributed) == ("cuda", 2, "ddp")
    assert panel.shows_strategy() and panel.strategy_combo.isVisible()
    assert "2 processes launched under torchrun" in panel.launch_note.text()
    assert "Resume relaunches" in panel.launch_note.text()
    panel.strategy_combo.setCurrentIndex(panel.strategy_combo.findData("fsdp"))
    assert panel.session.config.training.distributed == "fsdp"
    panel.device_row.choose("GPU 1 — NVIDIA H200 (140 GiB)")
    training = panel.session.config.training
    assert (training.device, training.processes) == ("cuda:1", 1) and not panel.shows_strategy()
    assert panel.device_row.error() is None and not panel.session.field_errors


def test_with_no_gpu_only_auto_and_cpu_are_offered(qtbot, monkeypatch) -> None:
    panel = _panel(qtbot, monkeypatch, [DeviceInfo("cpu", None, "CPU", 8 * GIB)])
    assert _labels(panel) == ["Auto", "CPU"]
    panel.device_row.choose("CPU")
    assert panel.session.config.training.device == "cpu"
    with pytest.raises(ValueError, match="no device"):
        panel.device_row.choose("All GPUs (2)")


def test_apple_gpu_is_offered_when_mps_is_there(qtbot, monkeypatch) -> None:
    panel = _panel(qtbot, monkeypatch, [DeviceInfo("cpu", None, "CPU", 8 * GIB), DeviceInfo("mps", None,
                                                                                             "Apple GPU", 8 * GIB)])
    assert _labels(panel) == ["Auto", "CPU", "Apple GPU"]
    panel.device_row.choose("Apple GPU")
    assert panel.session.config.training.device == "mps"


def test_the_list_is_this_machines_devices_from_core(qtbot) -> None:
    panel = SettingsPanel(StudioSession())
    qtbot.addWidget(panel)
    assert _labels(panel) == [c.label for c in device_choices(available_devices())]


def test_a_project_from_another_machine_keeps_its_device_as_an_entry_of_its_own(qtbot, monkeypatch) -> None:
    panel = _panel(qtbot, monkeypatch, TWO_GPUS)
    assert panel.session.try_update("training", device="cuda:3") is None
    assert panel.device_row.current().label == "cuda:3 — not on this machine"
    assert panel.session.try_update("training", device="cpu", processes=2) is None
    assert panel.device_row.current().label == "CPU × 2 processes" and panel.shows_strategy()
    assert _labels(panel)[-1] == "CPU × 2 processes"  # the earlier entry of its own is gone
    panel.device_row.choose("Auto")
    assert (panel.session.config.training.device, panel.session.config.training.processes) == ("auto", 1)
    assert _labels(panel) == [c.label for c in device_choices(TWO_GPUS)]


class _FakeLaunch:
    """Stands in for launch_processes: emits one StepMetrics per tick until it is stopped or
    paused (then a checkpoint and a 'cancelled' Finished, as the real one does) or ``steps`` are done."""

    def __init__(self, steps: int, pause_after: int | None = None) -> None:
        self.steps, self.pause_after = steps, pause_after
        self.calls: list[dict] = []
        self.step = 0
        self.paused_once = threading.Event()

    def __call__(self, config, on_event, cancel: CancelToken, *, resume: bool = False, extra_steps: int = 0):
        self.calls.append({"processes": config.training.processes, "resume": resume})
        total = config.training.max_steps
        status = "finished"
        while self.step < self.steps:
            if cancel.cancelled or cancel.paused:
                status = "cancelled"
                break
            self.step += 1
            on_event(StepMetrics(self.step, total, self.step / 10, 1.0 / self.step, 1e-3, 0.5, 100.0, None,
                                 None, 1.0))
            if self.step == self.pause_after:
                self.paused_once.wait(10)  # the test pauses here, before the next step
            threading.Event().wait(0.01)
        on_event(CheckpointSaved(self.step, f"{config.output.dir}/checkpoints/step-{self.step:08d}", "step"))
        result = TrainResult(status, self.step, total, config.output.dir)
        on_event(Finished(result))
        return result


def _run_panel(qtbot) -> RunPanel:
    session = StudioSession()
    session.set_loaded(load_model(session.config.model))
    panel = RunPanel(session)
    qtbot.addWidget(panel)
    panel.show()
    return panel


def test_a_run_over_two_processes_goes_through_the_launcher_into_the_curves(qtbot, monkeypatch, tmp_path) -> None:
    fake = _FakeLaunch(steps=5)
    monkeypatch.setattr(run_controller, "launch_processes", fake)
    monkeypatch.setattr(run_controller, "train", lambda *a, **k: pytest.fail("train() ran a launched run"))
    panel = _run_panel(qtbot)
    config = short_digits(tmp_path / "run", steps=5, processes=2)
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.start_run(config)
        assert panel.controller.launched and panel.controller.live_model is None
        assert "relaunches" in panel.pause_button.toolTip()
    assert finished.args[0].status == "finished"
    assert fake.calls == [{"processes": 2, "resume": False}]
    assert panel.plots.point_counts()["raw"] == 5
    assert "finished at step 5/5" in panel.stats_label.text()


def test_pausing_a_launched_run_saves_and_stops_and_resume_relaunches_it(qtbot, monkeypatch, tmp_path) -> None:
    fake = _FakeLaunch(steps=6, pause_after=2)
    monkeypatch.setattr(run_controller, "launch_processes", fake)
    monkeypatch.setattr(run_controller, "load_run_config", lambda folder: config)
    session = StudioSession()
    controller = RunController(session)
    config = short_digits(tmp_path / "run", steps=6, processes=2)
    steps, finished = [], []
    controller.sig_event.connect(lambda e: steps.append(e.step) if isinstance(e, StepMetrics) else None)
    controller.sig_run_finished.connect(finished.append)
    controller.start(config)
    qtbot.waitUntil(lambda: steps == [1, 2], timeout=RUN_TIMEOUT_MS)
    controller.pause()
    assert controller.state == PAUSING
    fake.paused_once.set()
    qtbot.waitUntil(lambda: controller.state == PAUSED, timeout=RUN_TIMEOUT_MS)
    assert finished == [] and controller.is_running(), "a pause is not the end of the run"
    assert not controller.worker.is_running(), "no process (nor its worker) is left while paused"
    controller.resume()
    qtbot.waitUntil(lambda: controller.state == IDLE, timeout=RUN_TIMEOUT_MS)
    assert steps == [1, 2, 3, 4, 5, 6] and [r.status for r in finished] == ["finished"]
    assert [c["resume"] for c in fake.calls] == [False, True]


def test_stopping_a_paused_launched_run_ends_it_at_once(qtbot, monkeypatch, tmp_path) -> None:
    fake = _FakeLaunch(steps=50, pause_after=1)
    monkeypatch.setattr(run_controller, "launch_processes", fake)
    panel = _run_panel(qtbot)
    config = short_digits(tmp_path / "run", steps=50, processes=2)
    panel.start_run(config)
    qtbot.waitUntil(lambda: panel.progress.value() >= 1, timeout=RUN_TIMEOUT_MS)
    qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)
    assert panel.state_label.text() == "Pausing: saving a checkpoint…" and not panel.pause_button.isEnabled()
    fake.paused_once.set()
    qtbot.waitUntil(lambda: panel.controller.state == PAUSED, timeout=RUN_TIMEOUT_MS)
    assert panel.state_label.text() == "Paused (checkpoint saved, processes stopped)"
    assert panel.pause_button.text() == "Resume" and panel.pause_button.isEnabled()
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.stop_button.click()
    assert finished.args[0].status == "cancelled" and len(fake.calls) == 1
