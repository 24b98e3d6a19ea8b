"""Moving one QEMU migration stream to several destinations.

Standard library only (plus nova_multidest.exceptions): this package runs
inside nova-compute and in the stand-alone demo alike.
"""
