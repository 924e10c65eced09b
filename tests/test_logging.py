"""The package's messages go through logging ("openrs_nb"); by default they reach stdout as "[openrs_nb] …"."""

import logging
import subprocess
import sys

import pytest

import openrs_nb

LOGGER = logging.getLogger("openrs_nb")


@pytest.fixture
def restore_logger():
    handlers, level = list(LOGGER.handlers), LOGGER.level
    yield
    LOGGER.handlers[:], LOGGER.level = handlers, level


def test_a_fresh_import_prints_info_with_the_prefix_on_stdout():
    code = "import logging, openrs_nb; logging.getLogger('openrs_nb.train').info('resuming from %s', 'ckpt-50')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (run.returncode, run.stdout, run.stderr) == (0, "[openrs_nb] resuming from ckpt-50\n", "")


def test_messages_follow_the_current_stdout_and_label_warnings(capsys):
    logging.getLogger("openrs_nb.data").info("dropped 3 of 10 prompts")
    logging.getLogger("openrs_nb.rewards").warning("2 gold answers could not be parsed")
    logging.getLogger("openrs_nb.data").debug("not shown at the default level")
    assert capsys.readouterr().out == ("[openrs_nb] dropped 3 of 10 prompts\n"
                                       "[openrs_nb] warning: 2 gold answers could not be parsed\n")


def test_users_can_silence_or_take_over(capsys, caplog, restore_logger):
    LOGGER.setLevel(logging.WARNING)
    logging.getLogger("openrs_nb.train").info("quiet")
    assert capsys.readouterr().out == ""
    LOGGER.setLevel(logging.INFO)
    LOGGER.handlers.clear()
    with caplog.at_level(logging.INFO, logger="openrs_nb"):
        logging.getLogger("openrs_nb.train").info("to your handlers only")
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == ["to your handlers only"]


def test_reimport_adds_no_second_handler(capsys):
    import importlib

    importlib.reload(openrs_nb)
    logging.getLogger("openrs_nb").info("once")
    assert capsys.readouterr().out == "[openrs_nb] once\n"
