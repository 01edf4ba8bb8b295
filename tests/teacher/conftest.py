import pytest


@pytest.fixture(scope="session")
def cornac_saved(tmp_path_factory):
    """cornac's own TIGER trained for a few steps and its Recommender.save pickle (tests/teacher/cornac_tiger.py).

    Needs cornac (the `cornac` extra; scripts/install.sh installs it, so CI runs these tests)."""
    pytest.importorskip("cornac")
    from tests.teacher import cornac_tiger

    return cornac_tiger.save(cornac_tiger.train(), tmp_path_factory.mktemp("cornac"))
