import sys

from canopy.cli import main

sys.exit(main())
