"""flserverd."""

from flcore.grpcquiet import quiet_grpc_core

quiet_grpc_core()  # before any module of flserverd imports grpc: the core reads it then
