"""Old path of ``python -m arihpc.runner.run``, for job scripts written before it moved."""

import sys

from arihpc.runner.run import main

if __name__ == "__main__":
    sys.exit(main())
