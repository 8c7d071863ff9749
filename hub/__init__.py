"""Hub daemon: the profile authority and the fleet's single place to look."""
