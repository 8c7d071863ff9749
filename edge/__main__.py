import sys

from fleetbus.entry import main
from fleetbus.settings import EdgeSettings

from edge.daemon import run

sys.exit(main("edge", EdgeSettings, run))
