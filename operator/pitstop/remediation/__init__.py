"""pitstop as the external remediator of NodeHealthCheck and MachineHealthCheck.

contract   pure: the node a remediation object is for, the NodeRepair it becomes,
           the conditions the checker reads
daemon     the kopf daemon per NodeRepairRemediation and its deletion handler
"""
