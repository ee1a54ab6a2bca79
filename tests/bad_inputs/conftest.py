from harness import work_spy  # noqa: F401  (the fixture, for every test in this folder)
