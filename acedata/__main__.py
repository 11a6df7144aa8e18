import sys

from acedata.cli import main

sys.exit(main())
