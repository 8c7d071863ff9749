import sys

from fleetbus.entry import main
from fleetbus.settings import RegionalSettings
from regional.daemon import run

sys.exit(main("regional", RegionalSettings, run))
