import sys

from edge.daemon import run
from fleetbus.entry import main
from fleetbus.settings import EdgeSettings

sys.exit(main("edge", EdgeSettings, run))
