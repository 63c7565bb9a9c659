"""Everything that reads or writes files: atomic writes, safe loading, the safetensors writer,
the adapter folder (ours and PEFT's formats), and merged exports with the checks that prove them.

Untrusted files are never unpickled (:mod:`.safe_loading`); every file is written atomically
(:mod:`.atomic_files`).
"""

from .adapter_folder import (
    CHAT_TEMPLATE_NAME,
    AdapterFacts,
    AdapterFit,
    AdapterMismatchError,
    apply_saved_chat_template,
    check_adapter_fit,
    load_adapter,
    read_adapter_facts,
    read_adapter_folder,
    read_chat_template,
    save_adapter,
    write_chat_template,
)
from .atomic_files import atomic_path, atomic_write_json, atomic_write_text, replace_folder
from .error_reports import REPORT_PREFIX, write_error_report
from .export_checks import max_output_difference, model_outputs, verify_adapter
from .merged_export import PRECISIONS, ExportResult, export_merged, read_sidecar, record_verification, verify_export
from .resource_files import demo_file
from .safe_loading import CorruptFileError, UnsafeFileError, load_safetensors, load_weights

__all__ = [
    "CHAT_TEMPLATE_NAME",
    "apply_saved_chat_template",
    "read_chat_template",
    "write_chat_template",
    "PRECISIONS",
    "REPORT_PREFIX",
    "AdapterFacts",
    "AdapterFit",
    "AdapterMismatchError",
    "check_adapter_fit",
    "read_adapter_facts",
    "CorruptFileError",
    "ExportResult",
    "UnsafeFileError",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "demo_file",
    "export_merged",
    "load_adapter",
    "load_safetensors",
    "load_weights",
    "max_output_difference",
    "model_outputs",
    "read_adapter_folder",
    "read_sidecar",
    "record_verification",
    "replace_folder",
    "save_adapter",
    "verify_adapter",
    "verify_export",
    "write_error_report",
]
