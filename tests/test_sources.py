"""MODEL from where users keep them: a loopback Hugging Face hub driven by the real huggingface_hub client,
an ollama store and an LM Studio folder laid out on disk as those tools lay them out; resolution order,
`models --json`, `pull`, `rm`, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import assert_one_line_error, run_main
from fake_hub import FakeHub
from tiny_byte_model import write_byte_model
from rocmforge_core import hub, store
from rocmforge_core.errors import BadInputError, OfflineError

RUN = ("-p", "hi", "--raw", "-n", "4", "--temperature", "0", "--backend", "cpu", "--json")
REPO = "owner/repo"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    return write_byte_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf").read_bytes()


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    """Every place rocmforge looks, pointed at empty folders of this test (nothing of the user's)."""
    dirs = {key: tmp_path / key for key in ("rocmforge", "hf_home", "hf_cache", "ollama", "lmstudio")}
    for key, var in (("rocmforge", "ROCMFORGE_HOME"), ("hf_home", "HF_HOME"), ("hf_cache", "HF_HUB_CACHE"),
                     ("ollama", "OLLAMA_MODELS"), ("lmstudio", "LMSTUDIO_MODELS")):
        monkeypatch.setenv(var, str(dirs[key]))
    for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.chdir(tmp_path)
    return dirs


@pytest.fixture
def fake_hub(tiny, places, monkeypatch):
    repos = {REPO: {"tiny-Q4_0.gguf": tiny, "tiny-Q8_0.gguf": tiny + b"\0" * 32, "README.md": b"# tiny\n"}}
    with FakeHub(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def lay_out_ollama(root: Path, model: str, tag: str, data: bytes, namespace: str = "library") -> Path:
    """Write a manifest and its blobs the way `ollama pull` leaves them; returns the model blob."""
    def blob(payload: bytes) -> str:
        digest = hashlib.sha256(payload).hexdigest()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / f"sha256-{digest}").write_bytes(payload)
        return f"sha256:{digest}"

    template = b"{{ .Prompt }}"
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": blob(b"{}"), "size": 2},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": blob(data), "size": len(data)},
            {"mediaType": "application/vnd.ollama.image.template", "digest": blob(template), "size": len(template)},
        ],
    }
    path = root / "manifests" / "registry.ollama.ai" / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return root / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}"


def models_json() -> list[dict]:
    result = run_main("models", "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def generated(result) -> dict:
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert 1 <= out["completion_tokens"] <= 4
    return out


# --- acceptance ----------------------------------------------------------------------------------

def test_pull_generate_list_and_rm_a_hugging_face_model(fake_hub, places, tiny):
    pulled = run_main("pull", f"hf://{REPO}/tiny-Q4_0.gguf")
    assert pulled.code == 0, pulled.stderr
    path = Path(pulled.stdout.strip().split(": ", 1)[1])
    assert path.read_bytes() == tiny and path.is_relative_to(places["hf_cache"])
    assert "models--owner--repo" in str(path)

    generated(run_main("generate", f"{REPO}:Q4_0", *RUN))  # picked by quant tag, case-insensitive below
    assert store.resolve_model(f"{REPO}:q4_0") == path

    entries = [e for e in models_json() if e["source"] == "hf"]
    assert entries == [{"name": f"hf://{REPO}/tiny-Q4_0.gguf", "path": str(path), "size": len(tiny),
                        "cached": True, "source": "hf"}]

    removed = run_main("rm", f"{REPO}:Q4_0")
    assert removed.code == 0, removed.stderr
    assert "removed hf://owner/repo/tiny-Q4_0.gguf" in removed.stdout
    assert not path.exists() and not [e for e in models_json() if e["source"] == "hf"]
    assert_one_line_error(run_main("rm", f"hf://{REPO}/tiny-Q4_0.gguf"), "holds nothing for")


def test_generate_reads_an_ollama_model_in_place(tiny, places):
    blob = lay_out_ollama(places["ollama"], "llama3.2", "latest", tiny)
    lay_out_ollama(places["ollama"], "qwen2.5", "7b", tiny + b"\0" * 32)
    generated(run_main("generate", "llama3.2", *RUN))
    # `rocmforge chat llama3.2` (piped: one answer) runs the same blob
    chat = run_main("chat", "llama3.2", "-n", "4", "--temperature", "0", "--backend", "cpu", stdin="hi\n")
    assert chat.code == 0 and chat.stdout.strip(), chat
    assert store.resolve_model("llama3.2:latest") == blob  # the blob itself: no copy
    assert store.resolve_model("qwen2.5:7b").parent == places["ollama"] / "blobs"

    ollama = {e["name"]: e for e in models_json() if e["source"] == "ollama"}
    assert set(ollama) == {"llama3.2:latest", "qwen2.5:7b"}
    assert ollama["llama3.2:latest"] == {"name": "llama3.2:latest", "path": str(blob), "size": len(tiny),
                                         "cached": True, "source": "ollama"}

    pulled = run_main("pull", "llama3.2")
    assert pulled.code == 0 and "read in place from ollama's store" in pulled.stdout
    line = assert_one_line_error(run_main("rm", "llama3.2"), "never deletes ollama's files")
    assert "ollama rm llama3.2:latest" in line and blob.read_bytes() == tiny


def test_lmstudio_models_are_listed_resolved_by_name_and_never_deleted(tiny, places):
    gguf = places["lmstudio"] / "publisher" / "tiny-GGUF" / "tiny-Q4_0.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(tiny)
    (gguf.parent / "mmproj-tiny-f16.gguf").write_bytes(b"GGUF")  # a vision projector, not a model
    entries = [e for e in models_json() if e["source"] == "lmstudio"]
    assert entries == [{"name": "publisher/tiny-GGUF/tiny-Q4_0.gguf", "path": str(gguf), "size": len(tiny),
                        "cached": True, "source": "lmstudio"}]
    for spec in ("publisher/tiny-GGUF/tiny-Q4_0.gguf", "tiny-Q4_0.gguf", "TINY-Q4_0"):
        assert store.resolve_model(spec) == gguf
    generated(run_main("generate", "tiny-Q4_0", *RUN))
    assert_one_line_error(run_main("rm", "tiny-Q4_0"), "never deletes LM Studio's files")
    assert_one_line_error(run_main("rm", str(gguf)), "never deletes LM Studio's files")
    assert gguf.exists()


def test_the_real_entry_point_pulls_with_the_hubs_progress_bar(fake_hub, places):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(store.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    # huggingface_hub draws its bar on a terminal only; TQDM_POSITION=-1 is its switch to draw it anyway.
    for ref, extra in ((f"{REPO}:Q8_0", {}), (f"hf://{REPO}/tiny-Q4_0.gguf", {"TQDM_POSITION": "-1"})):
        proc = subprocess.run([sys.executable, "-m", "rocmforge_cli", "pull", ref], env=dict(env, **extra),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"{ref}: ") and proc.stdout.count("\n") == 1
    assert proc.stderr.count("tiny-Q4_0.gguf") >= 1 and "100%" in proc.stderr
    assert [p for p, _ in fake_hub.downloads()] == [f"/{REPO}/resolve/main/tiny-Q8_0.gguf",
                                                      f"/{REPO}/resolve/main/tiny-Q4_0.gguf"]


# --- the hub client: resume, offline ---------------------------------------------------------------

def test_a_dropped_download_resumes_with_a_range_request(tiny, places, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # so the bytes before the cut are kept
    with FakeHub({REPO: {"tiny-Q4_0.gguf": tiny}}, cut_after=len(tiny) // 2) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        path = store.resolve_model(f"hf://{REPO}/tiny-Q4_0.gguf")
        ranges = [r for _, r in server.downloads()]
    assert path.read_bytes() == tiny
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:].split("-")[0]) > 0


def test_a_pulled_model_resolves_with_the_hub_unreachable(fake_hub, places, monkeypatch, tiny):
    path = store.resolve_model(f"hf://{REPO}/tiny-Q4_0.gguf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    assert store.resolve_model(f"{REPO}:Q4_0") == path  # the file list comes from the cache
    assert store.resolve_model(f"hf://{REPO}/tiny-Q4_0.gguf") == path
    with pytest.raises(OfflineError):  # never pulled, and the hub is out of reach
        store.resolve_model(f"{REPO}:Q8_0")
    line = assert_one_line_error(run_main("generate", "other/repo:Q4_0", *RUN), "cannot reach", code=1)
    assert "Traceback" not in line


# --- resolution order and quant picking ----------------------------------------------------------------

def test_resolution_order_path_known_hf_ollama_caches(fake_hub, places, tiny, monkeypatch):
    lay_out_ollama(places["ollama"], "smollm2", "latest", tiny)  # an ollama model named like a known one
    monkeypatch.setattr(store, "fetch_model", lambda name, progress=None: Path(f"/known/{name}"))
    assert store.resolve_model("smollm2") == Path("/known/smollm2")  # known name beats ollama
    Path("smollm2").write_bytes(b"GGUF")
    assert store.resolve_model("smollm2") == Path("smollm2")  # a file beats a known name

    ollama_blob = lay_out_ollama(places["ollama"], "repo", "Q4_0", tiny + b"x", namespace="owner")
    hf_path = store.resolve_model(f"{REPO}:Q4_0")  # also an ollama name (owner/repo:Q4_0): the hub wins
    assert hf_path.is_relative_to(places["hf_cache"]) and hf_path != ollama_blob

    blob = lay_out_ollama(places["ollama"], "tiny-q4_0", "latest", tiny)
    lm = places["lmstudio"] / "pub" / "r" / "tiny-Q4_0.gguf"
    lm.parent.mkdir(parents=True)
    lm.write_bytes(tiny)
    assert store.resolve_model("tiny-q4_0") == blob  # ollama beats a cache match
    with pytest.raises(BadInputError, match="matches several models"):  # the HF copy and LM Studio's
        store.resolve_model("tiny-Q4_0.gguf")


@pytest.mark.parametrize("quant, files, want", [
    ("q4_k_m", ["m-Q4_K_M.gguf", "m-Q8_0.gguf", "README.md"], "m-Q4_K_M.gguf"),
    ("Q4_0", ["m-Q4_0.gguf", "m-Q4_0_4_4.gguf"], "m-Q4_0.gguf"),  # the tag standing alone wins a tie
    ("Q8_0", ["sub/m-Q8_0.gguf", "mmproj-Q8_0.gguf"], "sub/m-Q8_0.gguf"),
    (None, ["only.gguf", "config.json"], "only.gguf"),
])
def test_pick_file(quant, files, want):
    assert hub.pick_file(files, hub.HfRef(REPO, quant=quant)) == want


@pytest.mark.parametrize("quant, files, needle", [
    ("Q4_K", ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf"], "'Q4_K' matches several files in owner/repo: m-Q4_K_M.gguf, m-Q4_K_S.gguf"),
    ("Q5_K", ["m-Q4_0.gguf"], "no .gguf file in owner/repo matches 'Q5_K' (files: m-Q4_0.gguf)"),
    ("Q4_0", ["model.safetensors"], "owner/repo holds no .gguf file"),
    (None, ["a.gguf", "b.gguf"], "holds several .gguf files: a.gguf, b.gguf"),
])
def test_pick_file_errors_list_the_candidates(quant, files, needle):
    with pytest.raises(BadInputError) as err:
        hub.pick_file(files, hub.HfRef(REPO, quant=quant))
    assert needle in err.value.one_line() and err.value.exit_code == 2


@pytest.mark.parametrize("spec, want", [
    ("hf://owner/repo/tiny-Q4_0.gguf", hub.HfRef(REPO, file="tiny-Q4_0.gguf")),
    ("hf://owner/repo/sub/dir/m.gguf", hub.HfRef(REPO, file="sub/dir/m.gguf")),
    ("hf://owner/repo:Q4_0", hub.HfRef(REPO, quant="Q4_0")),
    ("owner/repo:Q4_K_M", hub.HfRef(REPO, quant="Q4_K_M")),
    ("llama3.2", None), ("qwen2.5:7b", None), ("./a/b:c", None), ("models/m.gguf", None),
])
def test_parse_ref(spec, want):
    assert hub.parse_ref(spec) == want


# --- one-line errors, exit 2 ---------------------------------------------------------------------------

def test_nothing_matches_says_where_it_looked(places):
    line = assert_one_line_error(run_main("generate", "nosuch", *RUN), "unknown model 'nosuch'")
    for place in ("smollm2", str(places["ollama"]), str(places["hf_cache"]), str(places["lmstudio"]),
                  str(places["rocmforge"])):
        assert place in line
    assert "no such file: ./missing.gguf; looked in:" in assert_one_line_error(
        run_main("generate", "./missing.gguf", *RUN))


@pytest.mark.parametrize("spec, needle", [
    ("nobody/none:Q4_0", "no model repo nobody/none on http://127.0.0.1:"),
    ("hf://owner/repo/missing.gguf", "owner/repo has no file missing.gguf"),
    ("owner/repo:Q5_K", "no .gguf file in owner/repo matches 'Q5_K'"),
    ("hf://owner/repo", "owner/repo holds several .gguf files"),
    ("hf://owner", "bad Hugging Face reference 'hf://owner'"),
    ("hf://owner/repo/../x.gguf", "bad Hugging Face reference"),
])
def test_hub_errors_are_one_line(fake_hub, spec, needle):
    assert_one_line_error(run_main("generate", spec, *RUN), needle)
    assert_one_line_error(run_main("pull", spec), needle)


def test_store_errors_are_one_line(places, tiny):
    blob = lay_out_ollama(places["ollama"], "broken", "latest", tiny)
    blob.unlink()
    assert_one_line_error(run_main("generate", "broken", *RUN), "ollama's blob for broken:latest is missing")
    manifest = places["ollama"] / "manifests" / "registry.ollama.ai" / "library" / "odd" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{not json")
    assert_one_line_error(run_main("generate", "odd", *RUN), "ollama's manifest for odd:latest has no model layer")
    assert "broken" not in {e["name"].split(":")[0] for e in models_json()}  # half-pulled: not listed

    assert_one_line_error(run_main("pull", "llama3.2"), "cannot pull 'llama3.2'")
    assert_one_line_error(run_main("rm", "smollm2"), "smollm2 is not downloaded")
    mine = Path("mine.gguf")
    mine.write_bytes(tiny)
    assert_one_line_error(run_main("rm", str(mine)), "not in rocmforge's cache or the Hugging Face cache")
    assert mine.exists()
    assert_one_line_error(run_main("rm", "nosuch"), "unknown model 'nosuch'")


def test_rm_deletes_a_known_model_and_files_in_rocmforges_cache(places, tiny):
    places["rocmforge"].mkdir()
    known = store.model_path("smollm2")
    known.write_bytes(b"GGUF")
    extra = places["rocmforge"] / "extra.gguf"
    extra.write_bytes(tiny)
    assert {"name": "extra.gguf", "path": str(extra), "size": len(tiny), "cached": True,
            "source": "file"} in models_json()
    assert run_main("rm", "smollm2").code == 0 and not known.exists()
    assert run_main("rm", "extra").code == 0 and not extra.exists()
