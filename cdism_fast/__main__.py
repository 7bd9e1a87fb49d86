import sys

from cdism_fast.cli import main

sys.exit(main())
