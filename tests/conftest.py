"""Process-wide settings for the test session.

ITK reads its default thread count once per process. A workflow job pins it to one thread (antspyx's
``set_ants_deterministic``, called by preprocessing before any other ANTs call in that job), which is what
makes registration byte-reproducible; pytest runs every test in one process, so a test that resamples with
ANTs before the first preprocessing test (tests/test_apply.py) would leave ITK multi-threaded and the
preprocessing tests' same-bytes checks would fail by test order alone. Pin it here, as a job does.
"""

import os

os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
