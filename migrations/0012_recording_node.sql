-- The node a recording kept on local disk is on: only that node serves, uploads or sweeps
-- its file (NULL: recorded before nodes were named here, taken as any node's own).
ALTER TABLE recordings ADD COLUMN node_id TEXT;
