"""Learned reconstructions: the CU-Net regularizer, IMUNNE (implicit, Jacobian-free
training), Alt-UN (unrolled, end to end) and the plain CU-Net, all on the same problem."""
