import sys

from summoner.cli import main

sys.exit(main())
