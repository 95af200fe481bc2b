"""The project's promises about itself: README commands, CI script, packaged workloads."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [[line for line in b.splitlines() if line and not line.startswith("#")] for b in blocks[:2]]


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert text.startswith("# nbconv\n\n```bash\n")
    main_job, tests = _readme_commands()
    assert len(main_job) == 1 and "python -m nbconv" in main_job[0]
    assert len(tests) == 1 and "pytest" in tests[0]


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = _readme_commands()
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci_lines == tests


def test_builtin_workloads_load_and_build_specs():
    from nbconv.problems import load_workload

    name, problems = load_workload("demo")
    assert name == "demo" and len(problems) >= 5
    for p in problems:
        for d in ("forward", "grad_input", "grad_weights"):
            spec = p.spec(d)
            assert spec.direction == d and spec.flops() > 0


def test_guess_prefers_lowest_estimate_then_registration_order():
    from nbconv import registry
    from nbconv.problems import load_workload

    spec = load_workload("demo")[1][0].spec("forward")
    run = {"forward": lambda s, a, b: None}
    fast = registry.Algorithm("t_fast", "cpu", run, estimate=lambda s: 1.0)
    slow = registry.Algorithm("t_slow", "cpu", run, estimate=lambda s: 2.0)
    plain = registry.Algorithm("t_plain", "cpu", run)
    saved = dict(registry._REGISTRY)
    try:
        registry._REGISTRY.clear()
        for a in (plain, slow, fast):
            registry.register(a)
        assert registry.guess(spec) is fast
        assert registry.guess(spec.with_direction("grad_input")) is None
        registry._REGISTRY.clear()
        registry.register(plain)
        registry.register(registry.Algorithm("t_plain2", "cpu", run))
        assert registry.guess(spec) is plain
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
