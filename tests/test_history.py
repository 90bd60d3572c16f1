"""The chat's input history: its file under ROCMFORGE_HOME (else the user data dir), and a \"\"\" block
stored as one entry that sends the same message again when recalled."""

from __future__ import annotations

from rocmforge_cli import history
from rocmforge_cli.chat_cmd import default_history_path
from rocmforge_cli.slash import LineAssembler


def test_history_lives_under_rocmforge_home_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("ROCMFORGE_HOME", str(tmp_path / "rf"))
    assert default_history_path() == tmp_path / "rf" / "chat_history"
    monkeypatch.delenv("ROCMFORGE_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = default_history_path()
    assert path.name == "chat_history" and str(path).startswith(str(tmp_path / "data"))


def entries(path) -> list[str]:
    return list(history.BlockFileHistory(str(path)).load_history_strings())[::-1]  # oldest first


def test_a_block_is_one_entry_and_recalling_it_sends_the_same_message(tmp_path):
    path = tmp_path / "history"
    h = history.BlockFileHistory(str(path))
    for line in ["hello", '"""', "first line", 'second line"""', '"""inline"""', "/show info"]:
        h.append_string(line)
    assert entries(path) == ["hello", '"""\nfirst line\nsecond line"""', '"""inline"""', "/show info"]
    assert LineAssembler().feed(entries(path)[1]) == "first line\nsecond line"


def test_a_block_dropped_with_ctrl_c_is_not_stored(tmp_path):
    path = tmp_path / "history"
    h = history.BlockFileHistory(str(path))
    h.append_string('"""')
    h.append_string("never sent")
    h.cancel_block()
    h.append_string("next message")
    assert entries(path) == ["next message"]
    memory = history.BlockMemoryHistory()
    for line in ['"""opened', 'closed"""']:
        memory.append_string(line)
    assert memory.get_strings() == ['"""opened\nclosed"""']
