"""fleetsim's PKI: a root CA, an issuing CA, a broker certificate and thousands of device identities.

    from fleetsim.pki import Pki
    pki = Pki.init("pki")
    pki.issue(1000, model="pulse-oximeter", lot="2026-11")
    pki.revoke(lot="2026-11")          # rewrites pki/crl.pem
"""

from fleetsim.pki.authority import Pki
from fleetsim.pki.inventory import REASONS, Device, Fault
from fleetsim.pki.keys import KeyType
from fleetsim.pki.layout import Layout

__all__ = ["REASONS", "Device", "Fault", "KeyType", "Layout", "Pki"]
