"""The README's two set-up commands are what users type and what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line for line in lines if line.startswith("python3 -m venv")][:2]


def test_readme_opens_with_main_job_and_test_commands():
    main, tests = readme_commands()
    assert "torch==2.13.0" in main and "seganypet demo" in main
    assert "torch==2.13.0" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text()
