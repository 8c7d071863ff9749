import sys

from fleetbus.daemon.entry import main
from fleetbus.runtime.settings import RegionalSettings
from regional.daemon import run

sys.exit(main("regional", RegionalSettings, run))
