#!/usr/bin/env node
// Placeholder until src/main.ts lands.
console.log("lowrank");
