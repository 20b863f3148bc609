"""Makes the fixture builders in this folder importable as `data_fixtures`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
