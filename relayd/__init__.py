"""relayd: a real-time push relay on Twisted and Autobahn."""

__version__ = "0.1.0"
