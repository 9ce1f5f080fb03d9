import securetrain


def test_all_is_sorted_and_exact() -> None:
    assert securetrain.__all__ == sorted(securetrain.__all__)
    import types

    public = {
        n
        for n in dir(securetrain)
        if not n.startswith("_") and not isinstance(getattr(securetrain, n), types.ModuleType)
    }
    assert public | {"__version__"} == set(securetrain.__all__)


def test_readme_library_example_runs_as_written(capsys) -> None:
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("<!-- readme-example -->\n```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    last_eps = float(out.split("epoch 5: ε = ")[1].split()[0])
    assert 0.98 <= last_eps <= 1.0
    assert float(out.split("accuracy ")[1].split(",")[0]) > 0.7
