"""docs/flags.md is the flags reference scripts/flags_reference.py generates from the flag definitions: a flag added,
renamed, or given another default or help text without regenerating it fails here. A fresh interpreter, so a method
another test registered in this process (test_one_file_method's copy) is not in the reference."""

import os
import subprocess
import sys

from helpers import ROOT


def test_docs_flags_md_is_generated_from_the_flag_definitions():
    script = os.path.join(ROOT, "scripts", "flags_reference.py")
    result = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    text = open(os.path.join(ROOT, "docs", "flags.md")).read()
    for flag in ("`--defense`", "`--eps`", "`--[no]swa`", "`--suite`", "`--shard`"):
        assert flag in text, flag
