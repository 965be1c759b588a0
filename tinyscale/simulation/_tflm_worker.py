"""TFLM worker process: `python -m tinyscale.simulation._tflm_worker`.

Imports numpy and tflite_micro only (never TensorFlow), so it starts in well
under a second. It reads one JSON request per line on stdin and answers one
JSON line on stdout. The TFLM interpreter can abort() or segfault (e.g. with a
too-small arena), so every interpreter runs in a forked child: a crash loses
that child only, and the worker reports it. Forking after the model is loaded
makes each probe cost about a millisecond plus the interpreter's own setup.

Requests (all fields JSON):
  {"op": "load", "path": model_file}
  {"op": "run", "arena": n, "invoke": bool, "capture": bool, "allocations": bool,
   "inputs": npy_path | null, "outputs": npy_path | null, "timeout": seconds}
Answers:
  {"ok": true, ...} or {"ok": false, "error": "..."} (load);
  {"ok": bool, "status": "exit 0" | "exit 1" | "signal 6" | "timeout", "text": captured}
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import tempfile
import traceback
from typing import Any

import numpy as np

_EXIT_OK = 0
_EXIT_FAILED = 1
# Prefixes the Python exception a child reports, so the caller can tell it from
# TFLM's own messages (which are the more telling ones).
EXCEPTION_MARKER = "tinyscale-worker-exception: "


class _Model:
    def __init__(self) -> None:
        self.data: bytes | None = None
        self.resource_variables = 0


def _load(model: _Model, request: dict[str, Any]) -> dict[str, Any]:
    from tflite_micro.python.tflite_micro import runtime

    with open(request["path"], "rb") as file:
        data = file.read()
    try:
        # Parsed once here (tens of ms for a 1 MB model), not in every probe.
        tree = runtime.convert_bytearray_to_object(data)
        model.resource_variables = runtime.count_resource_variables(tree)
        graph = tree.subgraphs[0]
        first_input = graph.tensors[graph.inputs[0]]
        input_shape = [int(size) for size in first_input.shape]
        input_type = int(first_input.type)
    except Exception as error:  # the flatbuffer parser raises assorted types on garbage
        return {"ok": False, "error": f"unreadable model ({type(error).__name__}: {error})"}
    model.data = data
    return {"ok": True, "input_shape": input_shape, "input_type": input_type}


def _interpreter(model: _Model, arena: int) -> Any:
    """The raw wrapper: `runtime.Interpreter` would re-parse the whole model each time."""
    from tflite_micro.python.tflite_micro import _runtime, runtime

    config = runtime._ENUM_TRANSLATOR[runtime.InterpreterConfig.kAllocationRecording]
    return _runtime.InterpreterWrapper(model.data, [], arena, model.resource_variables, config, 0)


def _invoke_all(interpreter: Any, inputs: np.ndarray | None) -> list[np.ndarray]:
    """Invoke once per input sample (zeros when `inputs` is None); collect output 0."""
    details = interpreter.GetInputTensorDetails(0)
    if inputs is None:
        inputs = np.zeros((1, *details["shape"][1:]), dtype=details["dtype"])
    outputs = []
    for sample in inputs:
        interpreter.SetInputTensor(np.ascontiguousarray(sample[np.newaxis], dtype=details["dtype"]), 0)
        interpreter.Invoke()
        outputs.append(np.array(interpreter.GetOutputTensor(0))[0])
    return outputs


def _child(model: _Model, request: dict[str, Any], sink_fd: int) -> None:
    """Runs in the forked child; never returns."""
    status = _EXIT_FAILED
    try:
        os.dup2(sink_fd, 1)
        os.dup2(sink_fd, 2)
        interpreter = _interpreter(model, int(request["arena"]))
        if request.get("invoke"):
            inputs = np.load(request["inputs"]) if request.get("inputs") else None
            outputs = _invoke_all(interpreter, inputs)
            if request.get("outputs"):
                np.save(request["outputs"], np.stack(outputs))
        if request.get("allocations"):
            interpreter.PrintAllocations()
        status = _EXIT_OK
    except BaseException as error:  # report any failure through the exit status
        os.write(2, f"\n{EXCEPTION_MARKER}{type(error).__name__}: {error}\n".encode(errors="replace"))
    finally:
        os._exit(status)


def _wait(pid: int, timeout: float) -> str:
    """Wait for the child at most `timeout` seconds (pidfd: no polling latency)."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
    finally:
        os.close(pidfd)
    _, wait_status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(wait_status):
        return f"signal {os.WTERMSIG(wait_status)}"
    return f"exit {os.waitstatus_to_exitcode(wait_status)}"


def _run(model: _Model, request: dict[str, Any]) -> dict[str, Any]:
    if model.data is None:
        return {"ok": False, "status": "no model loaded", "text": ""}
    with tempfile.TemporaryFile() if request.get("capture") else open(os.devnull, "wb") as sink:
        pid = os.fork()
        if pid == 0:
            _child(model, request, sink.fileno())
        status = _wait(pid, float(request.get("timeout", 60.0)))
        text = ""
        if request.get("capture"):
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
    return {"ok": status == "exit 0", "status": status, "text": text}


def serve(requests: Any, answers: Any) -> None:
    model = _Model()
    handlers = {"load": _load, "run": _run}
    for line in requests:
        try:
            request = json.loads(line)
            answer = handlers[request["op"]](model, request)
        except Exception as error:  # a bad request must not kill the worker
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}",
                      "trace": traceback.format_exc(limit=3)}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> None:
    # Answers go to a private duplicate of stdout; fd 1 itself goes to stderr so
    # stray C++ prints can never corrupt the protocol.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
