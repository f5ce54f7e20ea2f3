"""Features: the batch feature job, access to the Feast store, the online reader the services use,
and point-in-time training sets.
"""
