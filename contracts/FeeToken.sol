// SPDX-License-Identifier: MIT
// A fee-on-transfer ERC-20 with an open mint, for the tests only: 1% of every transfer stays with the contract
// (its fee is logged first), and the recipient's share is logged twice. watcherd must credit what arrives, once,
// under the id its pending transfer() call had. Never deploy it anywhere that matters.
pragma solidity 0.8.26;

contract FeeToken {
    uint8 public constant decimals = 6;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;

    event Transfer(address indexed from, address indexed to, uint256 value);

    function mint(address to, uint256 value) external {
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        require(balanceOf[msg.sender] >= value, "balance");
        uint256 fee = value / 100;
        balanceOf[msg.sender] -= value;
        balanceOf[address(this)] += fee;
        balanceOf[to] += value - fee;
        emit Transfer(msg.sender, address(this), fee);
        emit Transfer(msg.sender, to, value - fee);
        emit Transfer(msg.sender, to, value - fee);
        return true;
    }
}
