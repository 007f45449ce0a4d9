import sys

from sawt.cli import main

sys.exit(main())
