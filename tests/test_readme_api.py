"""The README's Python API block runs exactly as written: a plain keras.Model wrapped in a tfadv method, fit with
SWA and robust validation, evaluated with a suite, exported; and the numbers it prints are a robust model's."""

import json
import os
import re

import tensorflow as tf

import script_server
from helpers import ROOT

MARKER = "<!-- python-api: tests/test_readme_api.py runs the next code block -->"


def readme_block():
    with open(os.path.join(ROOT, "README.md")) as handle:
        text = handle.read()
    assert MARKER in text
    after = text.split(MARKER, 1)[1]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    return match.group(1)


def test_the_readme_python_api_block_runs_and_trains_a_robust_model(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_block())
    result = script_server.run_script(str(script), cwd=tmp_path, timeout=540)  # as `python example.py`
    assert result.returncode == 0, result.stderr[-3000:]
    line = [text for text in result.stdout.splitlines() if text.startswith("clean ")][-1]
    clean, worst = (float(v) for v in re.findall(r"\d\.\d+", line))
    report = json.loads((tmp_path / "runs" / "api" / "eval" / "report.json").read_text())
    assert round(report["clean_accuracy"], 3) == clean and round(report["worst_case_accuracy"], 3) == worst
    # PGD-AT at eps 2/16 on digits: a natural MLP keeps ~0 % under the standard suite; this one keeps > 40 %
    assert clean > 0.85 and worst > 0.4, line
    assert set(report["attacks"]) >= {"fgsm", "pgd20", "pgd100", "cw20", "cw100", "pgd20_l2"}
    assert (tmp_path / "runs" / "api" / "best.weights.h5").exists()
    # the SavedModel loads without tfadv and gives the evaluated network's clean accuracy on the same examples
    loaded = tf.saved_model.load(str(tmp_path / "runs" / "api" / "saved_model" / "1"))
    from tfadv import data

    x, y = data.take(data.load("digits", val_fraction=0.1).test, 300)
    outputs = loaded.signatures["serving_default"](images=tf.constant(x))
    logits = next(v for k, v in outputs.items() if k == "logits")
    accuracy = float(tf.reduce_mean(tf.cast(tf.argmax(logits, -1) == y, tf.float32)))
    assert abs(accuracy - report["clean_accuracy"]) < 1e-6
