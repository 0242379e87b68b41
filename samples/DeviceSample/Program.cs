// A greenhouse thermometer on the Nightlight device SDK: every reading is kept on disk while offline and replayed
// in order, the heater follows latest-wins commands, and anyone subscribed to greenhouse1/status sees it come and go.
// Run: dotnet run --project samples/DeviceSample -- mqtt://localhost:1883
using Nightlight.Device;
using Nightlight.Mqtt;
using Nightlight.Protocol;

var broker = args.Length > 0 ? args[0] : "mqtt://localhost:1883";
var heaterOn = false;

var options = new DeviceClientOptions
{
    Id = "greenhouse1",
    DataDirectory = "greenhouse1-data",   // seq counter, outbox and command state live here
    Offline = OfflinePolicy.All,           // keep every reading on disk while offline, replay in order
    Outbox = new OutboxOptions { Sync = OutboxSync.Interval, MaxBytes = 16 * 1024 * 1024 },
    Connection = new MqttConnectionOptions
    {
        Brokers = ConnectionSettings.ParseBrokers(broker),
        KeepAlive = TimeSpan.FromSeconds(15),
    },
};

await using var client = new DeviceClient(options, (command, cancellationToken) =>
{
    // Called one command at a time, in order; stale and duplicate commands never get here.
    if (command.HeatingOn is { } on)
    {
        heaterOn = on;
        Console.WriteLine($"heater {(on ? "on" : "off")}");
    }
    return ValueTask.CompletedTask;
});
client.Start();

using var stop = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    e.Cancel = true;
    stop.Cancel();
};

var temperature = 15.0;
await DeviceClient.RunPeriodicallyAsync(TimeSpan.FromSeconds(2), async cancellationToken =>
{
    temperature += heaterOn ? 0.2 : -0.1;
    await client.SendAsync("temperature", Math.Round(temperature, 1), cancellationToken);
    Console.WriteLine($"{Topics.Telemetry(client.Id)}: {temperature:F1} °C, {client.Telemetry.Queued} waiting, {client.Telemetry.Sent} sent");
}, stop.Token);
