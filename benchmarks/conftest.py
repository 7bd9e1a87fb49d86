def pytest_configure(config):
    # Side by side: one table per case, backends as rows, sorted by median.
    if config.getoption("benchmark_group_by", None) == "group":
        config.option.benchmark_sort = "median"
