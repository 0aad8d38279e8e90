import sys

from kvasir_utils.cli import main

sys.exit(main())
