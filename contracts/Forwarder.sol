// SPDX-License-Identifier: MIT
// Forwards msg.value to an address through an internal call, the way a smart-contract wallet, an exchange's
// batch payout or a payment splitter does: the money reaches `to` in no transaction's `to` field, only
// through balance changes. watcherd's balance reconciliation must still find it.
pragma solidity 0.8.26;

contract Forwarder {
    function forward(address payable to) external payable {
        (bool ok, ) = to.call{value: msg.value}("");
        require(ok, "forward failed");
    }
}
